"""The MIMIC-CXR-JPG release on disk, versions 2.0.0 and 2.1.0 (Johnson et al. 2019, "MIMIC-CXR-JPG,
a large publicly available database of labeled chest radiographs", https://arxiv.org/abs/1901.07042;
PhysioNet, credentialed access: https://physionet.org/content/mimic-cxr-jpg/2.1.0/). Pure pandas/numpy.

The release folder holds (both versions keep the 2.0.0 file names):

- ``mimic-cxr-2.0.0-chexpert.csv.gz``: one row per study, ``subject_id``, ``study_id`` and the 14
  CheXpert observations (``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, blank not
  mentioned); ``mimic-cxr-2.0.0-negbio.csv.gz``: the same columns from the NegBio labeler
  (``--labels`` picks either);
- ``mimic-cxr-2.0.0-metadata.csv.gz``: one row per film, ``dicom_id``, ``subject_id``,
  ``study_id``, ``PerformedProcedureStepDescription``, ``ViewPosition``, ``Rows``, ``Columns``,
  ``StudyDate`` (YYYYMMDD, shifted), ``StudyTime`` (HHMMSS.fff), three ``*_CodeMeaning`` columns;
- ``mimic-cxr-2.0.0-split.csv.gz``: ``dicom_id``, ``study_id``, ``subject_id``, ``split``
  (train / validate / test);
- the films ``files/pXX/pSUBJECT_ID/sSTUDY_ID/DICOM_ID.jpg`` (XX: the subject id's first two digits).

What the adapter makes of them (docs/datasets/mimic-cxr.md):

- each film takes its study's labels; a film whose study has no label row is excluded and listed;
- blank (not mentioned) is MISSING, never negative; ``-1.0`` follows the ``uncertain`` policy;
  ``No Finding`` is not read (as for CheXpert: ``cxr_tf.data.datasets.chexpert``);
- view: ``ViewPosition`` PA / AP / LATERAL / LL as they are, ``XTABLE LATERAL`` -> LATERAL, blank
  -> ``""`` (kept, view unknown); any other position (AP AXIAL, decubitus, oblique, swimmer's:
  about 20 films in 2.0.0) is neither frontal nor lateral and is always excluded and listed;
- official split: the split file (validate -> val); patient: ``subject_id``; age and sex are
  unknown (they live in MIMIC-IV); follow_up: the study's rank among the patient's studies by
  ``StudyDate``, ``StudyTime`` (0 = first).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.data import harmonise
from cxr_tf.data.datasets.base import (
    Release,
    TableError,
    first_bad,
    keep_views,
    match_paths,
    outside_links,
    read_csv,
)
from cxr_tf.data.datasets.chexpert import parse_labels

NAME = "mimic-cxr"
TITLE = "MIMIC-CXR-JPG"
OPTIONS = {}
OFFICIAL_LISTS = False
SAMPLE = None
LABELS = "mimic-cxr-2.0.0-chexpert.csv.gz"
METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
SPLITS = {"train": "train", "validate": "val", "test": "test"}
VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LL", "XTABLE LATERAL": "LATERAL", "": ""}


def _release_file(data_dir, name):
    """``name`` in ``data_dir``, or its uncompressed copy (``.csv``); None when neither is there."""
    for candidate in (Path(data_dir) / name, Path(data_dir) / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def looks_like(data_dir):
    """What marks ``data_dir`` as the MIMIC-CXR-JPG release (its metadata table), or None."""
    found = _release_file(data_dir, METADATA)
    return f"MIMIC-CXR-JPG's {found.name}" if found is not None else None


def _required(data_dir, name):
    found = _release_file(data_dir, name)
    if found is None:
        raise FileNotFoundError(f"{Path(data_dir) / name} not found; MIMIC-CXR-JPG's --data-dir must hold {LABELS}, "
                                f"{METADATA} and {SPLIT} (https://physionet.org/content/mimic-cxr-jpg/)")
    return found


def _ids(path, raw, columns):
    """int64 columns of all-digit ids; TableError at the first row that is not."""
    for column in columns:
        bad = ~raw[column].str.fullmatch(r"\d+").to_numpy()
        if bad.any():
            raise first_bad(path, raw, bad, column, "id", "expected digits only")
        raw[column] = raw[column].astype(np.int64)


def _unique(path, raw, columns, what):
    repeated = raw.duplicated(list(columns), keep=False).to_numpy()
    if repeated.any():
        lines = raw["line"][repeated].head(5).tolist()
        raise TableError(f"{path}: {what} {raw.loc[repeated, list(columns)].iloc[0].tolist()} appears on several "
                         f"lines {lines}; each must have exactly one row")


def _read_metadata(path):
    raw = read_csv(path, ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"),
                   f"pass MIMIC-CXR-JPG's {METADATA}")
    bad = (raw["dicom_id"] == "").to_numpy()
    if bad.any():
        raise first_bad(path, raw, bad, "dicom_id", "empty image id", "every film needs its dicom_id")
    _ids(path, raw, ("subject_id", "study_id"))
    _unique(path, raw, ("dicom_id",), "film")
    bad = ~raw["StudyDate"].str.fullmatch(r"\d{8}").to_numpy()
    if bad.any():
        raise first_bad(path, raw, bad, "StudyDate", "date", "expected YYYYMMDD")
    time = pd.to_numeric(raw["StudyTime"], errors="coerce")
    if time.isna().any():
        raise first_bad(path, raw, time.isna().to_numpy(), "StudyTime", "time", "expected HHMMSS(.fff)")
    raw["when"] = raw["StudyDate"].astype(np.int64) * 1_000_000 + time
    return raw


def _follow_up(meta):
    """Each film's study rank among its patient's studies (0 = first) by date and time, then study id."""
    studies = meta.groupby(["subject_id", "study_id"], as_index=False)["when"].min()
    studies = studies.sort_values(["subject_id", "when", "study_id"])
    studies["follow_up"] = studies.groupby("subject_id").cumcount()
    return meta.merge(studies[["subject_id", "study_id", "follow_up"]], on=["subject_id", "study_id"], how="left")


def _read_split(path):
    raw = read_csv(path, ("dicom_id", "split"), f"pass MIMIC-CXR-JPG's {SPLIT}")
    bad = ~raw["split"].isin(SPLITS.keys()).to_numpy()
    if bad.any():
        raise first_bad(path, raw, bad, "split", "split", f"allowed: {', '.join(SPLITS)}")
    _unique(path, raw, ("dicom_id",), "film")
    return dict(zip(raw["dicom_id"], raw["split"].map(SPLITS)))


def read(data_dir, labels=None, uncertain="ignore", laterals=False):
    """The MIMIC-CXR-JPG release under ``data_dir`` as a ``cxr_tf.data.datasets.base.Release``.
    ``labels``: the study label table (default ``mimic-cxr-2.0.0-chexpert.csv.gz``; the NegBio
    ``mimic-cxr-2.0.0-negbio.csv.gz`` has the same columns)."""
    names = harmonise.release_labels(NAME)
    labels_path = Path(labels) if labels is not None else _required(data_dir, LABELS)
    metadata_path, split_path = _required(data_dir, METADATA), _required(data_dir, SPLIT)
    raw = read_csv(labels_path, ("subject_id", "study_id", *names),
                   f"pass MIMIC-CXR-JPG's {LABELS} (or mimic-cxr-2.0.0-negbio.csv.gz)")
    _ids(labels_path, raw, ("subject_id", "study_id"))
    _unique(labels_path, raw, ("subject_id", "study_id"), "study (subject_id, study_id)")
    study_labels = raw[["subject_id", "study_id"]].assign(**parse_labels(raw, names, labels_path, uncertain))
    meta = _follow_up(_read_metadata(metadata_path))
    split_of = _read_split(split_path)

    subject, study = meta["subject_id"].astype(str), meta["study_id"].astype(str)
    table = pd.DataFrame({"image_index": meta["dicom_id"], "patient_id": subject, "age": np.nan, "sex": "",
                          "view": meta["ViewPosition"].map(VIEWS), "split": meta["dicom_id"].map(split_of),
                          "follow_up": meta["follow_up"], "subject_id": meta["subject_id"],
                          "study_id": meta["study_id"], "position": meta["ViewPosition"]})
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + meta["dicom_id"] + ".jpg"
    matched, rows_without_files, files_without_rows, outside = match_paths(table, data_dir, relative, (".jpg",))

    excluded = outside_links(outside, data_dir)
    matched = matched.merge(study_labels, on=["subject_id", "study_id"], how="left", indicator=True)
    unlabelled = (matched.pop("_merge") == "left_only").to_numpy()
    if unlabelled.any():
        excluded[f"its study has no row in {labels_path.name}"] = matched["image_index"][unlabelled].tolist()
    matched = matched[~unlabelled]
    other = matched["view"].isna().to_numpy()
    for position, group in matched[other].groupby("position"):
        excluded[f"view position {position!r} is neither frontal (PA, AP) nor lateral"] = group["image_index"].tolist()
    kept, lateral = keep_views(matched[~other].drop(columns=["subject_id", "study_id", "position"]), laterals)
    excluded.update(lateral)
    return Release(NAME, names, kept, labels_path, rows_without_files, files_without_rows, excluded=excluded,
                   options={"uncertain": uncertain, "laterals": bool(laterals)})
