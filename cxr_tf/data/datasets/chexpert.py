"""The CheXpert release on disk: CheXpert-v1.0 and its downsampled CheXpert-v1.0-small
(Irvin et al. 2019, "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI, https://arxiv.org/abs/1901.07031; download and Stanford research use
agreement: https://stanfordmlgroup.github.io/competitions/chexpert/). Pure pandas/numpy.

The release folder (``CheXpert-v1.0-small/``) holds ``train.csv``, ``valid.csv`` and the films
``{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg``. Both tables have the columns
``Path`` (relative to the folder ABOVE the release folder:
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), ``Sex`` (Male, Female,
Unknown), ``Age`` (years), ``Frontal/Lateral``, ``AP/PA`` (AP, PA, LL, RL; blank for laterals),
then the 14 observations of the CheXpert labeler: ``1.0`` positive, ``0.0`` negative, ``-1.0``
uncertain, blank not mentioned.

What the adapter makes of them (docs/datasets/chexpert.md):

- blank (not mentioned) is MISSING (NaN; -1 in the records), never negative: a report that does
  not mention a finding does not say it is absent;
- ``-1.0`` (uncertain) follows the ``uncertain`` policy (``base.apply_uncertain``);
- ``No Finding`` is not a finding of ``findings.csv`` and is not read;
- view: Frontal with AP/PA ``AP`` or ``PA`` -> that; Frontal with ``LL``/``RL`` (decubitus) or
  blank -> ``""`` (a frontal film outside the PA/AP vocabulary: kept, view unknown); Lateral ->
  ``LATERAL`` (left out unless ``laterals``);
- official split: ``train.csv`` -> train, ``valid.csv`` -> val; these tables hold no test split,
  so ``--split official`` leaves test empty (the builder warns); use ``--split stratified`` for
  one;
- patient: the ``patientNNNNN`` folder of ``Path``; sex ``Unknown`` -> ``""``; follow_up 0 (the
  release does not say whether ``studyN`` numbers are chronological).
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.data import harmonise
from cxr_tf.data.datasets.base import (
    Release,
    TableError,
    apply_uncertain,
    first_bad,
    keep_views,
    match_paths,
    outside_links,
    read_csv,
)

NAME = "chexpert"
TITLE = "CheXpert"
OPTIONS = {}
OFFICIAL_LISTS = False
SAMPLE = None
TABLES = {"train.csv": "train", "valid.csv": "val"}
"""The release's label tables and the official split of their films."""
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
SEXES = {"Male": "M", "Female": "F", "Unknown": ""}
PROJECTIONS = ("AP", "PA", "LL", "RL", "")
LABEL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}
"""The CheXpert labeler's encoding (also MIMIC-CXR-JPG's): positive, negative, uncertain, not mentioned."""
_PATH_RE = re.compile(r"^(?:[^/]+/)?(?P<relative>(?:train|valid|test)/(?P<patient>patient\d+)/study\d+/[^/]+\.jpg)$")


def parse_labels(raw, labels, path, uncertain):
    """{label: float array}: 1.0 / 0.0 / NaN (not mentioned) with -1.0 (uncertain) replaced by
    the ``uncertain`` policy. TableError naming the line, column and value of anything else."""
    parsed = {}
    for label in labels:
        bad = ~raw[label].isin(LABEL_VALUES.keys()).to_numpy()
        if bad.any():
            raise first_bad(path, raw, bad, label, "label", "allowed: 1.0 positive, 0.0 negative, -1.0 uncertain, "
                            "blank not mentioned")
        parsed[label] = apply_uncertain(raw[label].map(LABEL_VALUES).to_numpy(np.float64), uncertain)
    return parsed


def _has_tables(folder):
    """True when ``folder`` holds train.csv or valid.csv whose header starts with CheXpert's columns."""
    for name in TABLES:
        try:
            with open(Path(folder) / name, "rb") as handle:
                header = handle.readline(4096).decode("utf-8-sig", "replace").strip()
        except OSError:
            continue
        if header.split(",")[:len(COLUMNS)] == list(COLUMNS):
            return True
    return False


def release_folder(data_dir):
    """The folder holding train.csv/valid.csv: ``data_dir`` itself or its one subfolder that does
    (``CheXpert-v1.0-small/``); None when neither. ValueError when several subfolders do."""
    data_dir = Path(data_dir)
    if _has_tables(data_dir):
        return data_dir
    found = [d for d in sorted(data_dir.iterdir()) if d.is_dir() and _has_tables(d)] if data_dir.is_dir() else []
    if len(found) > 1:
        raise ValueError(f"{data_dir} holds several CheXpert releases ({', '.join(d.name for d in found)}); "
                         f"pass the one to build as --data-dir")
    return found[0] if found else None


def looks_like(data_dir):
    """What marks ``data_dir`` (or its subfolder) as the CheXpert release, or None."""
    try:
        folder = release_folder(data_dir)
    except ValueError:
        return "several CheXpert release folders"
    return f"CheXpert's train.csv/valid.csv (in {folder.name}/)" if folder is not None else None


def _read_table(path, split, labels, uncertain):
    """One of train.csv / valid.csv as release rows (before matching the films)."""
    hint = "pass CheXpert's train.csv / valid.csv (columns Path, Sex, Age, Frontal/Lateral, AP/PA, observations)"
    raw = read_csv(path, (*COLUMNS, *labels), hint)
    parts = raw["Path"].str.extract(_PATH_RE)
    bad = parts["relative"].isna().to_numpy()
    if bad.any():
        raise first_bad(path, raw, bad, "Path", "film path", "expected CheXpert-v1.0-small/{train,valid}/"
                        "patientNNNNN/studyN/viewN_frontal.jpg")
    sex = raw["Sex"].map(SEXES)
    if sex.isna().any():
        raise first_bad(path, raw, sex.isna().to_numpy(), "Sex", "value", f"allowed: {', '.join(SEXES)}")
    age = pd.to_numeric(raw["Age"].where(raw["Age"] != ""), errors="coerce")
    bad = ((raw["Age"] != "") & (age.isna() | (age < 0) | (age > 150))).to_numpy()
    if bad.any():
        raise first_bad(path, raw, bad, "Age", "age", "expected years (a number from 0 to 150) or blank")
    for column, allowed in (("Frontal/Lateral", ("Frontal", "Lateral")), ("AP/PA", PROJECTIONS)):
        bad = ~raw[column].isin(allowed).to_numpy()
        if bad.any():
            raise first_bad(path, raw, bad, column, "value", f"allowed: {', '.join(a or 'blank' for a in allowed)}")
    frontal = (raw["Frontal/Lateral"] == "Frontal").to_numpy()
    view = np.where(frontal, np.where(raw["AP/PA"].isin(("AP", "PA")), raw["AP/PA"], ""), "LATERAL")
    table = pd.DataFrame({"image_index": raw["Path"], "patient_id": parts["patient"], "age": age.astype(np.float64),
                          "sex": sex, "view": view, "split": split, "follow_up": 0})
    for label, values in parse_labels(raw, labels, path, uncertain).items():
        table[label] = values
    return table, parts["relative"]


def read(data_dir, labels=None, uncertain="ignore", laterals=False):
    """The CheXpert release under ``data_dir`` (the release folder or the folder above it) as a
    ``cxr_tf.data.datasets.base.Release``. ``labels``: a table read instead of the release's
    train.csv (same columns, e.g. the AIMI release's ``train_cheXbert.csv``); valid.csv is read
    from the release folder when present. Films are matched by ``Path`` under the release folder."""
    apply_uncertain([], uncertain)  # a bad policy fails before any reading
    folder = release_folder(data_dir)
    if folder is None:
        raise FileNotFoundError(f"no CheXpert train.csv or valid.csv in {data_dir} or its subfolders; pass the "
                                f"CheXpert-v1.0(-small) folder as --data-dir")
    names = harmonise.release_labels(NAME)
    sources = {"train.csv": Path(labels) if labels is not None else folder / "train.csv",
               "valid.csv": folder / "valid.csv"}
    tables, relatives = [], []
    for name, path in sources.items():
        if path.is_file() or (name == "train.csv" and labels is not None):
            table, relative = _read_table(path, TABLES[name], names, uncertain)
            tables.append(table)
            relatives.append(relative)
    table = pd.concat(tables, ignore_index=True)
    relative = pd.concat(relatives, ignore_index=True)
    repeated = table["image_index"].duplicated(keep=False).to_numpy()
    if repeated.any():
        raise TableError(f"{folder}: film {table['image_index'][repeated].iloc[0]!r} is listed more than once "
                         f"(train.csv / valid.csv); each film must have exactly one row")
    matched, rows_without_files, files_without_rows, outside = match_paths(table, folder, relative, (".jpg",))
    kept, excluded = keep_views(matched, laterals)
    excluded.update(outside_links(outside, folder))
    label_table = sources["train.csv"] if sources["train.csv"].is_file() else sources["valid.csv"]
    return Release(NAME, names, kept, label_table, rows_without_files, files_without_rows, excluded=excluded,
                   options={"uncertain": uncertain, "laterals": bool(laterals)})
