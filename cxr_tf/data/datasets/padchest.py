"""The PadChest release (Bustos et al., "PadChest: A large chest x-ray image dataset with
multi-label annotated reports", Medical Image Analysis 66:101797, 2020; arXiv:1901.07441;
https://bimcv.cipf.es/bimcv-projects/padchest/): 160,868 films of 67,000 patients,
San Juan Hospital, Alicante, 2009-2017. Pure pandas/numpy.

What is read (column names as the release's README, BIMCV-CSUSP/Rx-thorax-automatic-captioning,
gives them):

- the label table ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (plain or ``.gz``)
  in the release folder: one row per film with ``ImageID`` (the PNG's name), ``ImageDir``
  (the numbered zip / folder 0..54 holding it), ``StudyDate_DICOM`` (``YYYYMMDD``),
  ``PatientID``, ``PatientBirth`` (year of birth, may be empty), ``PatientSex_DICOM``
  (``M``/``F``; anything else unknown), ``Projection`` and ``Labels``; other columns
  (the report, localisations, CUIs, DICOM fields) are not needed;
- the films: 16-bit greyscale PNGs, found by their ``ImageID`` anywhere under the folder
  (the release's ``ImageDir`` folders, or all of them unpacked into one).

Decisions:

- ``Labels`` is the report's list of findings written as a Python list
  (``['pleural effusion', 'cardiomegaly']``, ``['normal']``), parsed with
  ``ast.literal_eval``; entries are compared stripped and case-insensitively (the release
  writes ``'COPD signs'`` and some entries with a leading space). A finding the list does
  not name is NEGATIVE: the labels cover the whole report (every finding a radiologist
  wrote is listed), as torchxrayvision's ``PC_Dataset`` also reads them (absent = 0). Rows
  whose ``Labels`` is empty (no list, ``[]`` or ``['']``; not ``['normal']``) have no labels and are
  excluded, listed with the reason (torchxrayvision drops them too); text that is not a
  list of strings stops the build naming the line.
- A finding counts the release's sub-types named in ``SUBTYPES`` (e.g. ``rib fracture``
  for ``fracture``, ``loculated pleural effusion`` for ``pleural effusion``): the labels
  are a hierarchy and a report names the most specific one. Sequelae and non-lung
  lesions (``tuberculosis sequelae``, ``mediastinal mass``, ``pseudonodule``,
  ``subcutaneous emphysema``) are not the finding.
- Views: ``Projection`` ``PA`` -> PA; ``AP`` and ``AP_horizontal`` (supine, bedside) -> AP;
  ``L`` -> LATERAL (left out unless ``laterals``); ``COSTAL`` (rib views) and ``EXCLUDE``
  are not chest films and are always left out, listed; ``UNK`` or empty -> unknown (kept).
- Age: the study year minus ``PatientBirth`` (whole years; unknown where the birth year is
  empty). Follow-up: the order of the patient's study dates (0 = first).
- The release has no official split.
"""

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.data import harmonise
from cxr_tf.data.datasets.base import (
    Release,
    TableError,
    fail_at,
    files_by_name,
    first_bad,
    keep_views,
    outside_links,
    read_csv,
)

NAME = "padchest"
TITLE = "PadChest"
OPTIONS = {}
OFFICIAL_LISTS = False
SAMPLE = None
LABEL_TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
_TABLE_GLOB = "PADCHEST_chest_x_ray_images_labels_160K*.csv*"
REQUIRED = ("ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "Projection", "Labels")
VIEWS = {"PA": "PA", "AP": "AP", "AP_horizontal": "AP", "L": "LATERAL", "UNK": "", "": ""}
NOT_CHEST = {"COSTAL": "costal (rib) projection: not a chest film",
             "EXCLUDE": "projection marked EXCLUDE by the release"}
SUBTYPES = {
    "atelectasis": ("laminar atelectasis", "lobar atelectasis", "segmental atelectasis", "round atelectasis",
                    "total atelectasis", "atelectasis basal"),
    "pleural effusion": ("loculated pleural effusion",),
    "mass": ("pulmonary mass",),
    "nodule": ("multiple nodules",),
    "pleural thickening": ("apical pleural thickening", "calcified pleural thickening"),
    "fracture": ("rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture", "vertebral fracture"),
}
"""Release labels counted as the finding named by the key (PadChest's hierarchy: a report
names the most specific finding)."""
NO_LABELS = "no labels in the release (Labels empty)"


def find_label_table(data_dir):
    """The PadChest label table in ``data_dir`` (the release keeps it beside the image
    folders): ``PADCHEST_chest_x_ray_images_labels_160K*.csv(.gz)``, the shortest name first."""
    found = sorted(Path(data_dir).glob(_TABLE_GLOB), key=lambda p: (len(p.name), p.name))
    if not found:
        raise FileNotFoundError(f"no PadChest label table ({LABEL_TABLE} or .csv.gz) in {data_dir}; "
                                "download it from the release or pass --labels")
    return found[0]


def read_label_table(path):
    """The label table as a DataFrame of str with the ``REQUIRED`` columns and ``line``
    (the row's line in the file; the header is line 1). TableError for a missing column,
    a duplicated or empty ImageID, or a file pandas cannot read."""
    table = read_csv(path, REQUIRED, f"pass the PadChest {LABEL_TABLE}(.gz)")
    empty = table["ImageID"] == ""
    if empty.any():
        raise first_bad(path, table, empty.to_numpy(), "ImageID", "empty image name", "each row names its film")
    duplicated = table["ImageID"].duplicated(keep=False)
    if duplicated.any():
        name = table["ImageID"][duplicated].iloc[0]
        lines = table["line"][table["ImageID"] == name].tolist()
        raise TableError(f"{path}: image {name!r} appears on lines {lines}; each film must have exactly one row")
    return table.reset_index(drop=True)


def parse_labels(text, path, line):
    """The release labels of one ``Labels`` cell as a set of lower-case names; None for an
    empty cell or a list of empty names (no labels). TableError naming the line for text
    that is not a list of strings."""
    if text in ("", "nan", "NaN"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise fail_at(path, line, "Labels", text[:80], "not a list of findings",
                      "the release writes them as ['finding', ...]; restore the row from the release")
    return {v.strip().lower() for v in value if v.strip()} or None


def _label_matrix(label_sets, labels):
    """Float (N, len(labels)): 1.0 where the film's list names the finding or a sub-type of it, else 0.0."""
    matrix = np.zeros((len(label_sets), len(labels)), np.float64)
    for j, label in enumerate(labels):
        names = {label.lower(), *SUBTYPES.get(label.lower(), ())}
        matrix[:, j] = [bool(found & names) for found in label_sets]
    return matrix


def _ages(table, path):
    """Float ages (study year minus birth year; NaN where the birth year is empty)."""
    dates = table["StudyDate_DICOM"]
    bad = ~dates.str.fullmatch(r"\d{8}")
    if bad.any():
        raise first_bad(path, table, bad.to_numpy(), "StudyDate_DICOM", "not a date", "the release writes YYYYMMDD")
    birth = pd.to_numeric(table["PatientBirth"].replace("", np.nan), errors="coerce")
    bad = birth.isna() & (table["PatientBirth"] != "")
    ages = dates.str[:4].astype(np.float64) - birth
    bad |= ages < 0
    if bad.any():
        raise first_bad(path, table, bad.to_numpy(), "PatientBirth", "birth year not a year before the study",
                        "the release writes the year of birth (e.g. 1939.0), or leaves it empty")
    return np.floor(ages.to_numpy(np.float64))


# --------------------------------------------------------------------------- the adapter

def looks_like(data_dir):
    """What marks ``data_dir`` as the PadChest release (its label table), or None."""
    try:
        return f"the PadChest label table {find_label_table(data_dir).name}"
    except FileNotFoundError:
        return None


def read(data_dir, labels=None, uncertain="ignore", laterals=False):
    """The PadChest release under ``data_dir`` as a ``Release`` (module docstring: the
    decisions). ``uncertain`` does not apply (PadChest has no uncertain labels)."""
    path = Path(labels) if labels is not None else find_label_table(data_dir)
    table = read_label_table(path)
    findings = harmonise.release_labels(NAME)
    label_sets = [parse_labels(text, path, line) for text, line in zip(table["Labels"], table["line"])]
    unknown_view = ~table["Projection"].isin([*VIEWS, *NOT_CHEST])
    if unknown_view.any():
        raise first_bad(path, table, unknown_view.to_numpy(), "Projection", "unknown projection",
                        f"the release uses {', '.join(v for v in (*VIEWS, *NOT_CHEST) if v)}")
    release = pd.DataFrame({"image_index": table["ImageID"], "patient_id": table["PatientID"]})
    release["age"] = _ages(table, path)
    release["sex"] = table["PatientSex_DICOM"].where(table["PatientSex_DICOM"].isin(["M", "F"]), "")
    release["view"] = table["Projection"].map(VIEWS).fillna("")
    release["split"] = None
    dates = table["StudyDate_DICOM"].astype(np.int64)
    release["follow_up"] = (dates.groupby(table["PatientID"]).rank(method="dense") - 1).astype(np.int64)
    has_labels = np.array([s is not None for s in label_sets])
    matrix = _label_matrix([s or set() for s in label_sets], findings)
    for j, label in enumerate(findings):
        release[label] = matrix[:, j]
    excluded = {}
    for projection, reason in NOT_CHEST.items():
        drop = (table["Projection"] == projection).to_numpy()
        if drop.any():
            excluded[reason] = release["image_index"][drop].tolist()
    drop = ~has_labels & ~table["Projection"].isin(list(NOT_CHEST)).to_numpy()
    if drop.any():
        excluded[NO_LABELS] = release["image_index"][drop].tolist()
    release = release[has_labels & ~table["Projection"].isin(list(NOT_CHEST)).to_numpy()]
    files, duplicates, outside = files_by_name(data_dir, (".png",))
    excluded.update(outside_links(outside, data_dir))
    present = release["image_index"].isin(files.keys()).to_numpy()
    rows_without_files = release["image_index"][~present].tolist()
    release = release[present].copy()
    release.insert(1, "path", release["image_index"].map(files))
    listed = set(table["ImageID"])
    files_without_rows = sorted(str(p) for name, p in files.items() if name not in listed)
    release, lateral = keep_views(release, laterals)
    excluded.update(lateral)
    return Release(NAME, findings, release.reset_index(drop=True), path, rows_without_files, files_without_rows,
                   duplicates, excluded, {"laterals": bool(laterals)})
