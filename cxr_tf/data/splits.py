"""Train / val / test splits by patient (pandas, numpy, iterstrat; no TensorFlow).

- ``stratified``: patient-grouped multi-label iterative stratification
  (``iterstrat.MultilabelStratifiedShuffleSplit``, Sechidis et al. 2011) on
  per-patient label aggregates: a patient is positive for a finding when any of
  their films is; an extra column marks patients with only ``No Finding`` films.
  Test patients are drawn first, then validation patients from the rest.
  Fractions are of patients, which makes film fractions close to them.
- ``official``: the release's own split. NIH: its lists (``train_val_list.txt``,
  ``test_list.txt``); other releases: the ``split`` column their adapter fills
  (``cxr_tf.data.datasets``). When the release names no validation films, the
  validation split is carved out of train by patient, with the same stratification,
  sized ``val_fraction`` of all films.

Missing labels (NaN) count as negative for stratification only (they are stored missing).

Every split is checked in code (``check_no_patient_overlap``): a patient in two
splits raises ``LeakageError`` before anything is written. Seeded with a local
generator; no global RNG is touched.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from cxr_tf.data.labels import LABELS

SPLITS = ("train", "val", "test")
METHODS = ("stratified", "official")
OFFICIAL_LISTS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}


class LeakageError(ValueError):
    """A patient was assigned to more than one split."""


def make_split(table, method="stratified", val_fraction=0.1, test_fraction=0.2, seed=0,
               official_lists=None, labels=LABELS):
    """Split name (``train``/``val``/``test``) for every row of ``table`` (a table of
    ``cxr_tf.data.datasets.nih.read_label_table``), as a str Series aligned with ``table.index``.

    ``official_lists``: folder holding the two NIH list files (method ``official``;
    ``test_fraction`` is then ignored: the NIH list fixes the test set). ``labels``: the
    finding columns stratified on (the records' label set).
    """
    if method not in METHODS:
        raise ValueError(f"unknown split method {method!r}; choose one of {', '.join(METHODS)}")
    _check_fractions(val_fraction, test_fraction if method == "stratified" else 0.0)
    if method == "stratified":
        splits = stratified_split(table, val_fraction, test_fraction, seed, labels)
    elif has_release_split(table):
        splits = release_split(table, val_fraction, seed, labels)
    else:
        if official_lists is None:
            raise ValueError("split 'official' needs the folder of train_val_list.txt and test_list.txt "
                             "(--official-lists)")
        splits = official_split(table, official_lists, val_fraction, seed, labels)
    check_no_patient_overlap(table["patient_id"], splits)
    return splits


def has_release_split(table):
    """True when the adapter filled the table's ``split`` column (the release has a split)."""
    return "split" in table and table["split"].notna().any()


def release_split(table, val_fraction=0.1, seed=0, labels=LABELS):
    """The release's own split (column ``split``); validation carved out of train by patient
    (``val_fraction`` of all films) when the release has no validation films. ValueError
    naming the films the release leaves out of its split."""
    splits = table["split"].astype(object)
    unassigned = splits.isna() | ~splits.isin(SPLITS)
    if unassigned.any():
        raise ValueError(f"{int(unassigned.sum())} film(s) have no official split in the release, e.g. "
                         f"{table['image_index'][unassigned.to_numpy()].head(5).tolist()}; use --split stratified")
    splits = pd.Series(splits.to_numpy(), index=table.index, dtype=object)
    if val_fraction > 0 and not (splits == "val").any():
        _carve_val(table, splits, val_fraction, seed, labels)
    return splits


def _carve_val(table, splits, val_fraction, seed, labels):
    """Move ``val_fraction`` of all films, by patient and stratified, from train to val (in place)."""
    train = (splits == "train").to_numpy()
    pool = table[train]
    share = val_fraction * len(table) / max(len(pool), 1)
    if share >= 1.0:
        raise ValueError(f"val_fraction {val_fraction} asks for more films than the training split holds")
    patients, matrix = patient_label_matrix(pool, labels)
    chosen = set(patients[_draw_patients(matrix, share, seed)].tolist())
    splits[train & table["patient_id"].isin(chosen).to_numpy()] = "val"


def _check_fractions(val_fraction, test_fraction):
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1 (got {val_fraction} + {test_fraction}); "
                         f"nothing would be left to train on")


def patient_label_matrix(table, labels=LABELS):
    """(patient_ids (P,), uint8 (P, K + 1)): per patient, any-positive per finding of
    ``labels``, plus a last column for patients with none of them."""
    grouped = table.groupby("patient_id", sort=True)[list(labels)].max()
    matrix = (grouped.fillna(0) > 0).to_numpy(np.uint8)
    healthy = (matrix.sum(axis=1) == 0).astype(np.uint8)[:, None]
    return grouped.index.to_numpy(), np.hstack([matrix, healthy])


def _draw_patients(labels, fraction, seed):
    """Boolean mask (P,): the patients drawn for a split of ``fraction`` of them."""
    drawn = np.zeros(len(labels), bool)
    if fraction <= 0 or len(labels) == 0:
        return drawn
    count = int(round(fraction * len(labels)))
    if count == 0:
        return drawn
    if count >= len(labels):
        raise ValueError(f"a split of {fraction:.3f} of {len(labels)} patients leaves none for the rest")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=count, random_state=seed)
    _, chosen = next(splitter.split(np.zeros((len(labels), 1)), labels))
    drawn[chosen] = True
    return drawn


def stratified_split(table, val_fraction=0.1, test_fraction=0.2, seed=0, labels=LABELS):
    """Patient-grouped iterative stratification; see the module docstring."""
    patients, labels = patient_label_matrix(table, labels)
    test = _draw_patients(labels, test_fraction, seed)
    rest = np.flatnonzero(~test)
    val = np.zeros(len(patients), bool)
    if val_fraction > 0:
        val[rest[_draw_patients(labels[rest], val_fraction / (1.0 - test_fraction), seed + 1)]] = True
    names = np.where(test, "test", np.where(val, "val", "train"))
    return _rows_from_patients(table, patients, names)


def _rows_from_patients(table, patients, names):
    by_patient = pd.Series(names, index=patients)
    return pd.Series(table["patient_id"].map(by_patient).to_numpy(), index=table.index, dtype=object)


def find_official_lists(folder):
    """{"train_val": Path, "test": Path} for the two NIH list files in ``folder``
    (or below it)."""
    folder = Path(folder)
    found = {}
    for key, name in OFFICIAL_LISTS.items():
        candidates = [folder / name] if (folder / name).is_file() else sorted(folder.rglob(name))
        if not candidates:
            raise FileNotFoundError(
                f"{name} not found under {folder}; the official split needs the NIH lists "
                f"{' and '.join(OFFICIAL_LISTS.values())} (pass --official-lists FOLDER)")
        found[key] = candidates[0]
    return found


def _read_list(path):
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def official_split(table, lists_dir, val_fraction=0.1, seed=0, labels=LABELS):
    """The NIH official split, with ``val_fraction`` of all films carved out of
    train_val by patient (stratified). Rows in neither list, or in both, raise."""
    lists = find_official_lists(lists_dir)
    train_val, test = _read_list(lists["train_val"]), _read_list(lists["test"])
    names = table["image_index"]
    in_train_val, in_test = names.isin(train_val).to_numpy(), names.isin(test).to_numpy()
    for mask, what in ((in_train_val & in_test, "in both official lists"),
                       (~in_train_val & ~in_test, "in neither official list")):
        if mask.any():
            shown = names[mask].head(5).tolist()
            raise ValueError(f"{int(mask.sum())} image(s) are {what} ({lists['train_val']}, {lists['test']}), "
                             f"e.g. {shown}; use lists that match the label table or --split stratified")
    splits = pd.Series(np.where(in_test, "test", "train"), index=table.index, dtype=object)
    if val_fraction > 0:
        _carve_val(table, splits, val_fraction, seed, labels)
    return splits


def check_no_patient_overlap(patient_ids, splits):
    """Raise LeakageError when any patient has films in two splits (naming some)."""
    frame = pd.DataFrame({"patient": np.asarray(patient_ids), "split": np.asarray(splits)})
    per_patient = frame.groupby("patient")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise LeakageError(f"{len(leaking)} patient(s) appear in more than one split, e.g. "
                           f"{leaking.index[:5].tolist()}; refusing to write a leaking split")


def summarise(rows, labels=LABELS):
    """{"num_examples", "num_patients", "label_counts" (positives), "label_known" (films whose
    label is not missing)} of the table rows of one split."""
    return {"num_examples": int(len(rows)), "num_patients": int(rows["patient_id"].nunique()),
            "label_counts": {label: int((rows[label] == 1).sum()) for label in labels},
            "label_known": {label: int(rows[label].notna().sum()) for label in labels}}


class SplitWarning(UserWarning):
    """A validation or test split where some finding has no positive film (or the split is
    empty): that finding's AUC cannot be measured there."""


def missing_label_warnings(table, splits, names=("val", "test"), labels=LABELS):
    """Messages (and ``SplitWarning``s) for each finding with no positive film in
    a validation or test split: its AUC is undefined there."""
    messages = []
    for name in names:
        rows = table[(splits == name).to_numpy()]
        if not len(rows):
            messages.append(f"split {name!r} is empty")
            continue
        absent = [label for label in labels if not (rows[label] == 1).any()]
        if absent:
            messages.append(f"split {name!r} has no positive film for: {', '.join(absent)}")
    for message in messages:
        warnings.warn(message + "; its AUC cannot be measured there", SplitWarning, stacklevel=2)
    return messages
