"""What every dataset adapter returns (``Release``) and the helpers they share. Pure
pandas/numpy (no TensorFlow: the builder's worker processes import the data layer).

An adapter is one module of ``cxr_tf.data.datasets`` with:

``NAME``            the registry key (``"chexpert"``), also the column of ``findings.csv``
``TITLE``           the release's name as its authors give it
``looks_like(data_dir) -> str | None``
                    a short description of the files that make ``data_dir`` this dataset's
                    release (e.g. ``"train.csv with a Path column"``), None when they are absent;
                    the builder uses it to name the dataset of a folder given the wrong
                    ``--dataset``
``read(data_dir, labels=None, uncertain="ignore", laterals=False, **options) -> Release``
                    the release matched against the films on disk (the adapter finds its
                    films itself: by relative path, ``match_paths``, or by file name,
                    ``files_by_name``); ``labels``: the main label table when it is not where
                    the release puts it; ``uncertain``: what an uncertain label becomes
                    (``UNCERTAIN_POLICIES``; datasets without uncertain labels ignore it);
                    ``laterals``: keep lateral views (default: frontal films only, the laterals
                    counted and listed as excluded); ``options``: those of ``OPTIONS``
``OPTIONS``         {name: ``Option``}: the release's own build options (``--NAME`` of
                    ``python -m cxr_tf.build``, passed to ``read``); ``{}`` for most
``OFFICIAL_LISTS``  True when the release's official split is not in its tables but in the
                    list files ``cxr_tf.data.splits.OFFICIAL_LISTS`` (``--official-lists``)
``SAMPLE``          (folder, label table) of a copy of the release shipped inside cxr_tf, built
                    when no ``--data-dir`` is given; None when there is none

Labels in a ``Release`` table are floats: 1.0 positive, 0.0 negative, NaN missing (not
mentioned, not labelled, or uncertain under the ``ignore`` policy). The records store them
as int64 1 / 0 / -1 (``MISSING``).
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# TableError and open_text live in tables.py; the adapters import them from here with the rest
from cxr_tf.data.datasets.tables import TableError, check_parsed, excerpt, open_text  # noqa: F401

MISSING = -1
"""A missing label in the records and in every label array (y_true) of the package."""

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
"""CheXpert's uncertain label (-1.0) becomes missing, positive or negative: the U-Ignore,
U-Ones and U-Zeros policies of Irvin et al. (2019)."""

TABLE_COLUMNS = ("image_index", "path", "patient_id", "age", "sex", "view", "split", "follow_up")
"""The columns every ``Release.table`` has, before its label columns:

image_index  str, unique: the film's identity in this release (NIH file name, CheXpert path, ...)
path         Path of the film on disk
patient_id   str: the release's patient identifier (the split keeps a patient's films together)
age          float years, NaN unknown
sex          "M", "F" or "" (unknown)
view         "PA", "AP", "LATERAL", "LL" or "" (unknown); the metadata input uses PA / AP
split        the release's official split ("train", "val", "test") or None where it has none
follow_up    int, the film's order among the patient's visits where the release says, else 0
"""

SEXES = ("M", "F", "")
FRONTAL = ("PA", "AP")


@dataclass(frozen=True)
class Option:
    """A build option of one release: its allowed values (the first is the default) and what it
    does (the help of its command-line flag)."""

    values: tuple
    help: str


@dataclass
class Release:
    """One dataset's films and labels, matched against the files on disk.

    dataset: the adapter's NAME; labels: the release's own finding names, the order of the
    label columns of ``table`` (``TABLE_COLUMNS`` + one float column per label);
    label_table: the main label file (its SHA-256 identifies the build);
    rows_without_files: image_index values listed but not found; files_without_rows:
    film paths found but not listed; duplicates: (ignored, used) path pairs;
    excluded: {reason: [image_index, ...]} of rows left out on purpose (lateral views,
    films a release marks unusable), and {``LINK_OUTSIDE``: [path]} of folder links not
    followed; options: what the adapter applied
    (e.g. {"uncertain": "ignore", "laterals": False}), recorded in the manifest.
    """

    dataset: str
    labels: tuple
    table: pd.DataFrame
    label_table: Path
    rows_without_files: list = field(default_factory=list)
    files_without_rows: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    excluded: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = tuple(self.labels)
        missing = [c for c in (*TABLE_COLUMNS, *self.labels) if c not in self.table.columns]
        if missing:
            raise ValueError(f"{self.dataset} adapter: its table lacks the column(s) {missing}")


def read_csv(path, required, hint):
    """A comma-separated table as a DataFrame of str (blank cells ""), the ``required`` columns
    and ``line`` (the row's line in the file; the header is line 1). Read within the limits of
    ``tables.open_text``; TableError naming the file (and line) for a table over a limit, one
    that did not parse whole (``tables.check_parsed``), a missing column, a table without rows
    or text that is not CSV; ``hint``: what to pass."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} not found; {hint}")
    with open_text(path, hint) as handle:
        try:
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False, skip_blank_lines=False)
        except (pd.errors.ParserError, ValueError) as err:
            raise TableError(f"{path}: not a readable CSV table ({str(err).strip()}); {hint}") from None
    check_parsed(frame, path)
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise TableError(f"{path}: line 1 (header) lacks the required column(s) {missing}; found "
                         f"{list(frame.columns)}; {hint}")
    if frame.empty:
        raise TableError(f"{path}: has a header but no rows; {hint}")
    frame = frame[list(required)].apply(lambda column: column.str.strip())
    frame["line"] = np.arange(2, len(frame) + 2)
    return frame.reset_index(drop=True)


def patient_number(patient_id):
    """The int64 the records store for a patient identifier (str): the number itself when
    it is all digits and fits, else the first 63 bits of its BLAKE2b hash (stable across
    runs and machines). Two patients colliding is a 1-in-10^18 event per pair."""
    text = str(patient_id).strip()
    if text.isdigit() and int(text) < 2**63:
        return int(text)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def file_sha256(path):
    """Hex SHA-256 of a file's bytes (a label table's identity in the manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_files(data_dir, suffixes):
    """(files, outside): every file under ``data_dir`` (recursively, following folder links
    that stay inside it, once; hidden folders skipped) whose name ends with one of ``suffixes``
    (lower-case), as sorted str paths; and the links to folders outside ``data_dir`` (``..``,
    ``/``, another disk), not followed, as sorted str paths (``outside_links`` reports them).
    A link to one film is followed wherever it points: a folder of links is a common way to lay
    out a release (``tools/bench_build.py`` makes one), and a link to a FIFO or a device is
    refused by the film reader (``images.read_file``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist; pass --data-dir with the release")
    top = os.path.realpath(data_dir)
    found, outside, seen = [], [], set()
    for root, dirs, names in os.walk(data_dir, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink cycle, or a folder linked twice
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _stays(os.path.join(root, d), top, outside))
        found += [os.path.join(root, n) for n in names if n.lower().endswith(tuple(suffixes))]
    return sorted(found), sorted(outside)


def _stays(path, top, outside):
    """True unless ``path`` is a symlink whose target is not under ``top`` (then listed in ``outside``)."""
    if not os.path.islink(path):
        return True
    target = os.path.realpath(path)
    if target == top or target.startswith(top.rstrip(os.sep) + os.sep):
        return True
    outside.append(path)
    return False


LINK_OUTSIDE = "a link to a folder outside the data folder (not followed)"
"""The ``Release.excluded`` reason of the links ``find_files`` did not follow."""


def outside_links(outside, data_dir):
    """``Release.excluded`` entries ({reason: [link path relative to data_dir]}) for ``outside``."""
    return {LINK_OUTSIDE: [os.path.relpath(p, data_dir) for p in outside]} if outside else {}


def files_by_name(data_dir, suffixes):
    """Films under ``data_dir`` found by their file name, searched recursively (for releases
    whose table names a film by its file name, wherever it lies).

    Returns (files, duplicates, outside): ``files`` maps file name -> Path (the first in sorted
    path order); ``duplicates`` lists (ignored_path, used_path) for names found more than once;
    ``outside``: the symlinks not followed (``find_files``).
    """
    files, duplicates = {}, []
    found, outside = find_files(data_dir, suffixes)
    for path in found:
        name = os.path.basename(path)
        if name in files:
            duplicates.append((Path(path), files[name]))
        else:
            files[name] = Path(path)
    return files, duplicates, outside


def match_paths(table, data_dir, relative, suffixes):
    """Match a table's films to the files under ``data_dir`` by their path relative to it.

    ``relative``: Series of relative paths (str, "/"-separated) aligned with ``table``.
    Returns (matched table with a ``path`` column, rows_without_files (image_index list),
    files_without_rows (str paths with one of ``suffixes`` that no row names), outside (the
    symlinks not followed, ``find_files``))."""
    data_dir = Path(data_dir)
    found, outside = find_files(data_dir, suffixes)
    on_disk = {os.path.relpath(p, data_dir).replace(os.sep, "/"): p for p in found}
    present = relative.isin(on_disk.keys()).to_numpy()
    matched = table[present].copy()
    matched["path"] = relative[present].map(lambda r: Path(on_disk[r])).to_numpy()
    listed = set(relative)
    return (matched.reset_index(drop=True), table["image_index"][~present].tolist(),
            sorted(p for r, p in on_disk.items() if r not in listed), outside)


def apply_uncertain(values, policy):
    """Float array of labels with the uncertain value -1.0 replaced by the policy's
    (``ignore`` -> NaN, ``ones`` -> 1.0, ``zeros`` -> 0.0)."""
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain={policy!r}: choose one of {', '.join(UNCERTAIN_POLICIES)}")
    replacement = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[policy]
    values = np.asarray(values, np.float64).copy()
    values[values == -1.0] = replacement
    return values


def keep_views(table, laterals):
    """(table of the films kept, {reason: [image_index, ...]} of those left out): frontal
    views (``FRONTAL``) only unless ``laterals``; a film of unknown view is kept (and
    said so by its empty ``view``)."""
    if laterals:
        return table.reset_index(drop=True), {}
    lateral = ~table["view"].isin((*FRONTAL, "")).to_numpy()
    excluded = {}
    if lateral.any():
        excluded["lateral view (pass --laterals to keep)"] = table["image_index"][lateral].tolist()
    return table[~lateral].reset_index(drop=True), excluded


def fail_at(path, line, column, value, what, fix):
    """A TableError naming the file, line, column and value, and what to do."""
    return TableError(f"{path}: line {line}: column {column!r}: {what} {excerpt(value)}; {fix}")


def first_bad(path, raw, bad, column, what, fix):
    """``fail_at`` the first row of ``raw`` (a ``read_csv`` table) where ``bad`` (bool array or
    Series) holds, with the count of such rows."""
    row = int(np.flatnonzero(bad)[0])
    return fail_at(path, int(raw["line"].iloc[row]), column, raw[column].iloc[row], what,
                   f"{fix} ({int(np.sum(bad))} such row(s) in all)")
