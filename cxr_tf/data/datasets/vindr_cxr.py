"""The VinDr-CXR release 1.0.0 on PhysioNet (Nguyen et al., "VinDr-CXR: An open dataset of
chest X-rays with radiologist's annotations", Scientific Data 9:429, 2022;
https://physionet.org/content/vindr-cxr/1.0.0/): 18,000 de-identified DICOM films from two
Vietnamese hospitals, 15,000 for training (each read by 3 of 17 radiologists
independently) and 3,000 for testing (the consensus of 5 radiologists). Pure pandas/numpy
(pydicom reads the films' headers for age and sex).

What is read, as the release lays it out:

- ``annotations/image_labels_train.csv``: one row per film per radiologist, columns
  ``image_id``, ``rad_id`` and the 28 labels (22 local findings such as ``Nodule/Mass``,
  6 global diagnoses such as ``Tuberculosis``, and ``No finding``), each 0 or 1;
- ``annotations/image_labels_test.csv``: one row per film (the consensus), ``image_id`` and
  the same labels (no ``rad_id``; one is accepted if present);
- the films ``train/<image_id>.dicom`` and ``test/<image_id>.dicom`` (decoded by
  ``cxr_tf.data.dicom``); the boxes (``annotations_train.csv`` / ``annotations_test.csv``)
  are not needed.

Decisions:

- Training labels are the radiologists' MAJORITY by default (positive when more than half
  of a film's readers mark it: 2 of 3), ``aggregate="any"`` makes one reader enough. The
  majority is closer to how the test labels were made (a consensus) and keeps one reader's
  false positive out; "any" favours sensitivity (Nguyen et al. report low agreement between
  single readers on rare findings).
- Every label is known (0/1): the radiologists answered each finding for each film.
- Official split: ``train`` / ``test`` as the release gives them (no validation films: the
  builder carves them from train).
- Patients: the release is de-identified per image and says nothing of who a film belongs
  to, so each film is its own patient; a stratified split therefore cannot keep one
  person's films together (nobody can, from this release).
- Age and sex: the DICOM header's ``PatientAge`` (``045Y``) and ``PatientSex`` (``M``/``F``),
  read without the pixels; unknown where absent or unreadable. View: the header's
  ``ViewPosition`` when PA or AP, else unknown (the release describes its films as
  frontal postero-anterior chest radiographs, no laterals).
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.data import harmonise
from cxr_tf.data.datasets.base import (
    Option,
    Release,
    TableError,
    first_bad,
    match_paths,
    outside_links,
    read_csv,
)

NAME = "vindr-cxr"
TITLE = "VinDr-CXR"
TABLES = {"train": "annotations/image_labels_train.csv", "test": "annotations/image_labels_test.csv"}
AGGREGATES = ("majority", "any")
OPTIONS = {"aggregate": Option(AGGREGATES, "how the radiologists' labels of one training film combine: "
                                           "majority (the default: 2 of 3) or any (one is enough)")}
OFFICIAL_LISTS = False
SAMPLE = None
SUFFIX = ".dicom"


def _read_table(path, split, findings):
    """One label table as a DataFrame: ``image_id``, ``rad_id`` (train), the finding columns
    (float 0/1) and ``line``. TableError naming the file, line and column for a missing
    column, an empty image id, a value other than 0/1, or a test film listed twice."""
    required = ["image_id", *(["rad_id"] if split == "train" else []), *findings]
    table = read_csv(path, required, f"pass the VinDr-CXR {TABLES[split]}")
    empty = table["image_id"] == ""
    if empty.any():
        raise first_bad(path, table, empty.to_numpy(), "image_id", "empty image id", "each row names its film")
    for label in findings:
        bad = ~table[label].isin(["0", "1", "0.0", "1.0"])
        if bad.any():
            raise first_bad(path, table, bad.to_numpy(), label, "label value",
                            "the release writes 0 (absent) or 1 (present)")
        table[label] = table[label].astype(np.float64)
    if split == "test":
        twice = table["image_id"].duplicated(keep=False)
        if twice.any():
            name = table["image_id"][twice].iloc[0]
            raise TableError(f"{path}: test image {name!r} appears on lines "
                             f"{table['line'][table['image_id'] == name].tolist()}; the test labels are one "
                             "consensus row per film")
    return table


def aggregate_readers(table, findings, aggregate="majority"):
    """One row per ``image_id`` (first-appearance order): a finding is 1.0 when more than half
    of the film's radiologists mark it (``majority``) or when any does (``any``)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    groups = table.groupby("image_id", sort=False)
    positives, readers = groups[list(findings)].sum(), groups.size()
    if aggregate == "majority":
        votes = positives.to_numpy() * 2 > readers.to_numpy()[:, None]
    else:
        votes = positives.to_numpy() > 0
    return pd.DataFrame(votes.astype(np.float64), index=positives.index, columns=list(findings)).reset_index()


def _header_meta(path):
    """(age years or NaN, sex "M"/"F"/"", view "PA"/"AP"/"") from a film's DICOM header."""
    import pydicom  # noqa: PLC0415 (only VinDr-CXR's adapter reads DICOM headers)

    from cxr_tf.data.dicom import dicom_meta  # noqa: PLC0415

    if not os.path.isfile(path):  # a FIFO or device would block dcmread: the decoder reports the film
        return np.nan, "", ""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientAge", "PatientSex", "ViewPosition"])
        age, sex, view = dicom_meta(ds)
    except Exception:  # noqa: BLE001 - an unreadable header: unknown here, the decoder reports the film
        return np.nan, "", ""
    return (np.nan if age is None else float(np.floor(age))), sex or "", view or ""


# --------------------------------------------------------------------------- the adapter

def looks_like(data_dir):
    """What marks ``data_dir`` as the VinDr-CXR release (its image label tables), or None."""
    found = [name for name in TABLES.values() if (Path(data_dir) / name).is_file()]
    return f"the VinDr-CXR label table(s) {', '.join(found)}" if found else None


def read(data_dir, labels=None, uncertain="ignore", laterals=False, aggregate="majority"):
    """The VinDr-CXR release under ``data_dir`` as a ``Release`` (module docstring: the
    decisions). ``labels``: the training label table when it is not in ``annotations/``
    (the test table is then looked for beside it); ``aggregate``: ``majority`` or ``any``
    of the training radiologists. ``uncertain`` and ``laterals`` do not apply (no
    uncertain labels, no lateral films)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    data_dir = Path(data_dir)
    findings = harmonise.release_labels(NAME)
    train_path = Path(labels) if labels is not None else data_dir / TABLES["train"]
    paths = {"train": train_path, "test": train_path.parent / Path(TABLES["test"]).name}
    if not paths["train"].is_file():
        raise FileNotFoundError(f"VinDr-CXR training labels {paths['train']} not found; pass the release's folder "
                                "(holding annotations/ train/ test/) or --labels")
    parts = []
    for split, path in paths.items():
        if not path.is_file():
            continue
        table = _read_table(path, split, findings)
        rows = aggregate_readers(table, findings, aggregate) if split == "train" else table.drop(columns="line")
        rows = rows[["image_id", *findings]].copy()
        rows["split"] = split
        parts.append(rows)
    both = pd.concat(parts, ignore_index=True)
    twice = both["image_id"].duplicated(keep=False)
    if twice.any():
        raise TableError(f"image {both['image_id'][twice].iloc[0]!r} is in both {paths['train']} and {paths['test']}; "
                         "a film belongs to one split")
    release = pd.DataFrame({"image_index": both["image_id"], "patient_id": both["image_id"]})
    release["split"] = both["split"]
    release["follow_up"] = 0
    for label in findings:
        release[label] = both[label].to_numpy(np.float64)
    matched, rows_without_files, files_without_rows, outside = match_paths(
        release, data_dir, both["split"] + "/" + both["image_id"] + SUFFIX, (SUFFIX,))
    meta = [_header_meta(p) for p in matched["path"]]
    matched["age"] = np.array([m[0] for m in meta], np.float64)
    matched["sex"] = [m[1] for m in meta]
    matched["view"] = [m[2] for m in meta]
    options = {"aggregate": aggregate}
    return Release(NAME, findings, matched, paths["train"], rows_without_files, files_without_rows,
                   excluded=outside_links(outside, data_dir), options=options)
