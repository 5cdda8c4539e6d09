"""The NIH ChestX-ray14 release on disk: the label table, the image files, the
bounding-box table. Pure pandas/numpy (no TensorFlow).

Two real layouts of the label table are read:

- the 2020 revision ``Data_Entry_2017_v2020.csv``: ages are integers;
- the original 2017 ``Data_Entry_2017.csv``: a trailing comma on every line and
  ages written ``058Y`` (``M`` months and ``D`` days are converted to whole years).

Either may be gzipped. The header's bracketed names (``OriginalImage[Width,Height]``)
contain commas, so columns are located by expanding the header, not by pandas'
naive split. Rows are numbered as lines of the file (the header is line 1) in
every error message.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.data.datasets.base import Release, TableError, files_by_name, open_text, outside_links
from cxr_tf.data.datasets.tables import check_parsed, excerpt
from cxr_tf.data.labels import LABELS, NO_FINDING

# raw column name -> our name; all seven are required
TABLE_COLUMNS = {
    "Image Index": "image_index",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
SEXES = ("M", "F")
VIEWS = ("PA", "AP")
_BBOX_SPELLING = {"Infiltrate": "Infiltration"}  # BBox_List_2017 vs the label table
_AGE_RE = re.compile(r"^(\d+)([YMD]?)$")
_AGE_UNIT_DAYS = {"Y": 365.25, "M": 365.25 / 12, "D": 1.0, "": 365.25}  # days per unit


def _expand_header(line):
    """Header fields, with each bracketed name ``A[x,y]`` expanded to ``A[x]``, ``A[y]``
    so that field positions line up with the data rows."""
    names, current, depth = [], "", 0
    for char in line.rstrip("\r\n"):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    fields = []
    for name in names:
        match = re.fullmatch(r"(.*)\[(.*)\](.*)", name.strip())
        if match and "," in match[2]:
            fields += [f"{match[1]}[{part.strip()}]{match[3]}" for part in match[2].split(",")]
        else:
            fields.append(name.strip())
    return fields


def _read_raw(path, required):
    """(DataFrame of str with the required columns, header fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {path} not found; pass the NIH Data_Entry_2017*.csv(.gz)")
    with open_text(path, "pass the NIH Data_Entry_2017*.csv(.gz) label table") as handle:
        header = _expand_header(handle.readline())
        missing = [name for name in required if name not in header]
        if missing:
            raise TableError(f"{path}: line 1 (header) lacks the required column(s) {missing}; "
                             f"found {header}")
        positions = [header.index(name) for name in required]
        try:
            frame = pd.read_csv(handle, header=None, dtype=str,
                                keep_default_na=False, skip_blank_lines=True, skipinitialspace=True)
        except pd.errors.EmptyDataError:
            raise TableError(f"{path}: has a header but no rows; pass the complete table") from None
        except (pd.errors.ParserError, ValueError) as err:
            raise TableError(f"{path}: not a readable CSV table ({str(err).strip()}); check the file "
                             "is the NIH label table, comma-separated") from None
    check_parsed(frame, path)  # every column: an open quote may sit in one we do not use
    missing = [p for p in positions if p not in frame.columns]
    if missing:
        raise TableError(f"{path}: the rows have {len(frame.columns)} fields, fewer than the header's "
                         f"{len(header)}; check the file is the NIH label table, comma-separated")
    frame = frame[positions]
    frame.columns = list(required)
    return frame, header


def read_label_table(path):
    """The NIH label table as a DataFrame, one row per film, in file order.

    Columns: ``image_index`` (str), ``finding_labels`` (str, as in the file),
    ``follow_up``, ``patient_id``, ``age`` (int64, years), ``sex`` (``M``/``F``),
    ``view`` (``PA``/``AP``), ``line`` (the row's line number in the file), and one
    uint8 0/1 column per finding in ``LABELS`` order (``label_matrix`` stacks them).
    Raises TableError naming the line and value for an unknown label, a duplicate
    image, a missing column or a non-numeric id, follow-up or age.
    """
    raw, _ = _read_raw(path, list(TABLE_COLUMNS))
    raw = raw.rename(columns=TABLE_COLUMNS)
    table = pd.DataFrame({"image_index": raw["image_index"], "finding_labels": raw["finding_labels"]})
    table["line"] = np.arange(2, len(raw) + 2)
    table.index = pd.RangeIndex(len(raw))

    def fail(mask, column, what):
        row = int(np.flatnonzero(mask)[0])
        raise TableError(f"{path}: line {row + 2}: {what} {excerpt(raw[column].iloc[row])} in column "
                         f"{_raw_name(column)!r} ({int(mask.sum())} such row(s) in all)")

    empty = raw["image_index"] == ""
    if empty.any():
        fail(empty.to_numpy(), "image_index", "empty image name")
    duplicated = raw["image_index"].duplicated(keep=False).to_numpy()
    if duplicated.any():
        name = raw["image_index"][duplicated].iloc[0]
        lines = (np.flatnonzero(raw["image_index"].to_numpy() == name) + 2).tolist()
        raise TableError(f"{path}: image {excerpt(name)} appears on several lines {lines[:10]}; "
                         f"each film must have exactly one row")
    for column in ("patient_id", "follow_up"):
        values = _non_negative_ints(raw[column])
        if values.isna().any():
            fail(values.isna().to_numpy(), column, "non-numeric")
        table[column] = values.astype(np.int64)
    table["age"] = _parse_ages(raw["age"], fail)
    for column, allowed in (("sex", SEXES), ("view", VIEWS)):
        bad = ~raw[column].isin(allowed).to_numpy()
        if bad.any():
            fail(bad, column, f"value (allowed: {', '.join(allowed)})")
        table[column] = raw[column]
    matrix = _multi_hot(raw["finding_labels"], fail)
    for j, label in enumerate(LABELS):
        table[label] = matrix[:, j]
    return table


def _raw_name(column):
    return {v: k for k, v in TABLE_COLUMNS.items()}.get(column, column)


def _non_negative_ints(strings):
    """Float Series: the value of each all-digit string, NaN for anything else."""
    return pd.to_numeric(strings.where(strings.str.isdigit()), errors="coerce")


def _parse_ages(ages, fail):
    """int64 years from ``58`` (2020 revision) or ``058Y`` / ``007M`` / ``020D`` (2017)."""
    plain = _non_negative_ints(ages)
    if not plain.isna().any():
        return plain.astype(np.int64)
    parts = ages.str.extract(_AGE_RE)  # number, unit
    if parts[0].isna().any():
        fail(parts[0].isna().to_numpy(), "age", "non-numeric age")
    number, unit = parts[0].astype(np.float64), parts[1]
    in_years = unit.isin(["", "Y"]).to_numpy()
    return np.where(in_years, number, np.floor(number * unit.map(_AGE_UNIT_DAYS) / 365.25)).astype(np.int64)


def _multi_hot(findings, fail):
    """uint8 (N, 14) from pipe-separated finding strings; 'No Finding' is all zeros."""
    exploded = findings.str.split("|").explode()
    exploded = exploded.str.strip()
    known = set(LABELS) | {NO_FINDING}
    unknown = ~exploded.isin(known)
    if unknown.any():
        rows = np.zeros(len(findings), bool)
        rows[exploded.index[unknown.to_numpy()].unique()] = True
        fail(rows, "finding_labels", f"unknown finding {excerpt(exploded[unknown].iloc[0])} "
             f"(known: {', '.join(LABELS)}, '{NO_FINDING}') in labels")
    matrix = np.zeros((len(findings), len(LABELS)), np.uint8)
    column = {label: j for j, label in enumerate(LABELS)}
    positive = exploded[exploded != NO_FINDING]
    matrix[positive.index.to_numpy(), positive.map(column).to_numpy()] = 1
    mixed = (exploded == NO_FINDING).groupby(level=0).any() & (exploded != NO_FINDING).groupby(level=0).any()
    if mixed.any():
        fail(mixed.reindex(range(len(findings)), fill_value=False).to_numpy(), "finding_labels",
             f"'{NO_FINDING}' combined with findings in")
    return matrix


def label_matrix(table):
    """uint8 (N, 14) multi-hot matrix of a table from ``read_label_table``."""
    return table[list(LABELS)].to_numpy(np.uint8)


def find_label_table(data_dir):
    """The label table inside a data folder (searched recursively): the
    ``Data_Entry_2017*.csv*`` file, else any ``Data_Entry*.csv*``; among several,
    the 2020 revision (``v2020``) first, then the shortest name."""
    data_dir = Path(data_dir)
    for pattern in ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz", "Data_Entry*.csv", "Data_Entry*.csv.gz"):
        found = sorted(data_dir.rglob(pattern))
        if found:
            return min(found, key=lambda p: ("v2020" not in p.name, len(p.name), str(p)))
    raise FileNotFoundError(
        f"no label table (Data_Entry_2017*.csv or .csv.gz) under {data_dir}; "
        f"download it from the NIH release or pass --labels")


@dataclass
class Inventory:
    """A label table matched against the image files found on disk.

    table: the rows that have a file, with a ``path`` column; rows_without_files:
    image names listed in the table but not found; files_without_rows: paths of
    images found but not in the table; duplicates: (ignored, used) path pairs; outside: the
    symlinks leaving ``data_dir``, not followed (``base.find_files``).
    """

    table: pd.DataFrame
    rows_without_files: list = field(default_factory=list)
    files_without_rows: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    outside: list = field(default_factory=list)


def match_files(table, data_dir):
    """Inventory of ``table`` (from ``read_label_table``) against the images under ``data_dir``."""
    files, duplicates, outside = files_by_name(data_dir, (".png",))
    present = table["image_index"].isin(files.keys()).to_numpy()
    matched = table[present].copy()
    matched["path"] = matched["image_index"].map(files)
    in_table = set(table["image_index"])
    return Inventory(
        table=matched.reset_index(drop=True),
        rows_without_files=table["image_index"][~present].tolist(),
        files_without_rows=sorted(str(p) for n, p in files.items() if n not in in_table),
        duplicates=duplicates,
        outside=outside,
    )


def read_bbox_table(path):
    """The NIH bounding-box table (``BBox_List_2017.csv``, gz or not) as a DataFrame:
    ``image_index``, ``label`` (spelled as in ``LABELS``: the file's ``Infiltrate``
    becomes ``Infiltration``), ``x``, ``y``, ``w``, ``h`` (float, pixels of the
    1024 x 1024 films), ``line``."""
    raw, _ = _read_raw(path, ["Image Index", "Finding Label", "Bbox [x]", "Bbox [y]", "Bbox [w]", "Bbox [h]"])
    boxes = pd.DataFrame({"image_index": raw.iloc[:, 0].str.strip(),
                          "label": raw.iloc[:, 1].str.strip().replace(_BBOX_SPELLING)})
    boxes["line"] = np.arange(2, len(raw) + 2)
    for j, name in enumerate("xywh"):
        values = pd.to_numeric(raw.iloc[:, 2 + j], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise TableError(f"{path}: line {row + 2}: non-numeric box {name} {excerpt(raw.iloc[row, 2 + j])}")
        boxes[name] = values.astype(np.float64)
    unknown = ~boxes["label"].isin(LABELS)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise TableError(f"{path}: line {row + 2}: unknown finding {excerpt(boxes['label'].iloc[row])}")
    return boxes[["image_index", "label", "x", "y", "w", "h", "line"]]


# --------------------------------------------------------------------------- the adapter
NAME = "nih"
TITLE = "NIH ChestX-ray14"
OPTIONS = {}
OFFICIAL_LISTS = True  # train_val_list.txt and test_list.txt (cxr_tf.data.splits.official_split)
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample"
SAMPLE_LABELS = SAMPLE_DIR / "Data_Entry_sample.csv"
SAMPLE = (SAMPLE_DIR, SAMPLE_LABELS)
"""150 real films of the release at 128 px, shipped in ``cxr_tf/sample`` (the default build)."""


def looks_like(data_dir):
    """What marks ``data_dir`` as the NIH release (its label table), or None."""
    try:
        return f"the NIH label table {find_label_table(data_dir).name}"
    except FileNotFoundError:
        return None


def read(data_dir, labels=None, uncertain="ignore", laterals=False):
    """The NIH release under ``data_dir`` as a ``cxr_tf.data.datasets.base.Release``:
    every finding known (0/1: the NIH labels are text-mined with no "uncertain" and no
    "not mentioned"), all views frontal (PA/AP), no official split in the table (the
    official lists are read by ``cxr_tf.data.splits.official_split``). ``uncertain`` and
    ``laterals`` do not apply."""
    labels_path = Path(labels) if labels is not None else find_label_table(data_dir)
    inventory = match_files(read_label_table(labels_path), data_dir)
    table = inventory.table
    release = table[["image_index", "path"]].copy()
    release["patient_id"] = table["patient_id"].astype(str)
    release["age"] = table["age"].astype(np.float64)
    release["sex"], release["view"], release["split"] = table["sex"], table["view"], None
    release["follow_up"] = table["follow_up"]
    for label in LABELS:
        release[label] = table[label].astype(np.float64)
    return Release(NAME, LABELS, release, labels_path, inventory.rows_without_files,
                   inventory.files_without_rows, inventory.duplicates, outside_links(inventory.outside, data_dir))
