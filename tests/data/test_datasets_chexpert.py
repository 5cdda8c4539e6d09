"""The chexpert and mimic-cxr adapters on releases written in their published formats from real
films (tests/releases.py): the records hold what the release's tables say (read here with the
csv module, independently of the adapters), missing stays missing, laterals and unusable views are
excluded and listed, the official split is honoured; the uncertain policies; a folder of another
dataset is named; bad tables fail naming file, line, column and value."""

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from releases import read_records, write_chexpert_release, write_mimic_release

from cxr_tf.data import builder, harmonise
from cxr_tf.data.datasets import chexpert, mimic_cxr, nih
from cxr_tf.data.datasets.base import MISSING, TableError, patient_number

# The builder warns about val/test splits without positives for some finding (their AUC cannot be
# measured); on fixtures of a few dozen films that is expected, and the manifest's "warnings" hold it.
pytestmark = pytest.mark.filterwarnings("ignore:split .* its AUC cannot be measured there:UserWarning")

CELLS = {"1.0": 1, "0.0": 0, "-1.0": MISSING, "": MISSING}  # the uncertain policy "ignore"
POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}


def build(release, out, **options):
    return builder.build_records(data_dir=release, out=out, image_size=32, workers=1, progress=False,
                                 log=lambda *_: None, **options)


def table_rows(path):
    """The rows of a CSV (gzipped or not) as dicts, read with the csv module."""
    data = Path(path).read_bytes()
    text = gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()
    return list(csv.DictReader(io.StringIO(text)))


def edit_table(path, line, column, value=None, drop=False):
    """Rewrite one cell (``line``: 1 is the header) of a plain or gzipped CSV, or ``drop`` a column."""
    rows = [next(csv.reader([text])) for text in
            (gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()).splitlines()]
    at = rows[0].index(column)
    if drop:
        rows = [row[:at] + row[at + 1:] for row in rows]
    else:
        rows[line - 1][at] = value
    text = "".join(",".join(row) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())


@pytest.fixture(scope="module")
def chexpert_release(tmp_path_factory):
    return write_chexpert_release(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="module")
def mimic_release(tmp_path_factory):
    return write_mimic_release(tmp_path_factory.mktemp("mimic"))


# --------------------------------------------------------------------------- CheXpert
def test_chexpert_records_hold_what_its_tables_say(chexpert_release, tmp_path):
    # built from the folder above the release folder, as the tables' Path column is written
    records = build(chexpert_release.parent, tmp_path, dataset="chexpert", split="official")
    labels = list(harmonise.release_labels("chexpert"))
    assert list(records.labels) == labels and records.harmonised["Pleural Effusion"] == "Effusion"
    examples = read_records(tmp_path, len(labels))
    listed = {row["Path"]: (split, row) for name, split in (("train.csv", "train"), ("valid.csv", "val"))
              for row in table_rows(chexpert_release / name)}
    on_disk = {path for path in listed if (chexpert_release.parent / path).is_file()}
    laterals = sorted(p for p in on_disk if listed[p][1]["Frontal/Lateral"] == "Lateral")
    assert sorted(examples) == sorted(on_disk - set(laterals)) and len(examples) == 42
    for name, example in examples.items():
        split, row = listed[name]
        assert example["labels"].tolist() == [CELLS[row[label]] for label in labels], name
        assert example["split"] == split
        assert example["patient_id"] == patient_number(name.split("/")[2])
        assert example["age"] == int(row["Age"])
        assert example["sex"].decode() == {"Male": "M", "Female": "F", "Unknown": ""}[row["Sex"]]
        assert example["view"].decode() == row["AP/PA"] and example["follow_up"] == 0
    values = np.stack([e["labels"] for e in examples.values()])
    assert {1, 0, MISSING} <= set(values.ravel().tolist())  # not mentioned stays missing, never negative
    patients = {}
    for example in examples.values():
        patients.setdefault(example["patient_id"], set()).add(example["split"])
    assert all(len(splits) == 1 for splits in patients.values()) and len(patients) < len(examples)
    excluded = records.excluded["lateral view (pass --laterals to keep)"]
    assert list(records.excluded) == ["lateral view (pass --laterals to keep)"]
    assert excluded["count"] == 3 and sorted(excluded["first"]) == laterals
    assert sorted(line.split("\t")[0] for line in (tmp_path / "excluded.txt").read_text().splitlines()) == laterals
    assert records.rows_without_files["count"] == len(listed) - len(on_disk) == 2
    assert records.skipped == [{"file": str(chexpert_release / "train/patient09999/study1/view1_frontal.jpg"),
                                    "reason": "no row in the label table"}]
    assert records.splits["test"].count == 0 and "split 'test' is empty" in records.warnings
    assert records.options == {"uncertain": "ignore", "laterals": False}


def test_chexpert_uncertain_policies_laterals_and_release_folder(chexpert_release):
    rows = {row["Path"]: row for row in table_rows(chexpert_release / "train.csv")}
    labels = harmonise.release_labels("chexpert")
    uncertain_cells = 0
    for policy, replacement in POLICIES.items():
        table = chexpert.read(chexpert_release, uncertain=policy).table
        for _, film in table.iterrows():
            for label in labels:
                cell = rows.get(film["image_index"], {}).get(label)
                if cell == "-1.0":
                    uncertain_cells += 1
                    assert film[label] == replacement or (np.isnan(replacement) and np.isnan(film[label]))
    assert uncertain_cells > 3 * 3  # the fixture has several uncertain labels
    with pytest.raises(ValueError, match="uncertain='maybe'"):
        chexpert.read(chexpert_release, uncertain="maybe")
    above, kept = chexpert.read(chexpert_release.parent), chexpert.read(chexpert_release, laterals=True)
    assert above.table["image_index"].tolist() == chexpert.read(chexpert_release).table["image_index"].tolist()
    assert len(kept.table) == len(above.table) + 3 and kept.excluded == {}
    assert sorted(kept.table["view"].unique()) == ["AP", "LATERAL", "PA"]


def test_each_folder_is_recognised_and_a_wrong_dataset_named(chexpert_release, mimic_release, tmp_path):
    cases = [("chexpert", nih.SAMPLE_DIR, "nih"), ("nih", chexpert_release, "chexpert"),
             ("mimic-cxr", chexpert_release.parent, "chexpert"), ("chexpert", mimic_release, "mimic-cxr"),
             ("nih", mimic_release, "mimic-cxr")]
    for dataset, folder, right in cases:
        with pytest.raises(ValueError, match=f"pass --dataset {right}") as error:
            build(folder, tmp_path, dataset=dataset)
        assert str(folder) in str(error.value)
    assert chexpert.looks_like(nih.SAMPLE_DIR) is None and mimic_cxr.looks_like(chexpert_release) is None


@pytest.mark.parametrize("line, column, value, what", [
    (4, "Edema", "2.0", "label"), (3, "Sex", "M", "value"), (2, "AP/PA", "Ap", "value"), (5, "Age", "old", "age"),
    (6, "Path", "CheXpert-v1.0-small/train/view1_frontal.jpg", "film path")])
def test_chexpert_bad_cells_are_named(tmp_path, line, column, value, what):
    release = write_chexpert_release(tmp_path, films=8, valid_patients=1)
    edit_table(release / "train.csv", line, column, value)
    with pytest.raises(TableError) as error:
        chexpert.read(release)
    assert str(error.value).startswith(f"{release / 'train.csv'}: line {line}: column {column!r}: {what} {value!r}")


def test_chexpert_missing_column_is_named(tmp_path):
    release = write_chexpert_release(tmp_path, films=8, valid_patients=1)
    edit_table(release / "valid.csv", 1, "Pleural Effusion", drop=True)
    with pytest.raises(TableError, match=r"valid\.csv: line 1 \(header\) lacks the required column\(s\) \['Pleural Effusion'\]"):
        chexpert.read(release)


# --------------------------------------------------------------------------- MIMIC-CXR-JPG
def _follow_ups(metadata):
    """{study_id: rank among its subject's studies by StudyDate, StudyTime}."""
    studies = sorted({(r["subject_id"], r["StudyDate"], float(r["StudyTime"]), r["study_id"]) for r in metadata})
    ranks, seen = {}, {}
    for subject, _, _, study in studies:
        ranks[study] = seen.get(subject, 0)
        seen[subject] = ranks[study] + 1
    return ranks


def test_mimic_records_hold_what_its_tables_say(mimic_release, tmp_path):
    records = build(mimic_release, tmp_path, dataset="mimic-cxr", split="official")
    labels = list(harmonise.release_labels("mimic-cxr"))
    examples = read_records(tmp_path, len(labels))
    metadata = table_rows(mimic_release / "mimic-cxr-2.0.0-metadata.csv.gz")
    study_labels = {r["study_id"]: r for r in table_rows(mimic_release / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    split_of = {r["dicom_id"]: r["split"] for r in table_rows(mimic_release / "mimic-cxr-2.0.0-split.csv.gz")}
    follow_up = _follow_ups(metadata)
    on_disk = {r["dicom_id"]: r for r in metadata if (mimic_release / "files" / f"p{r['subject_id'][:2]}" / f"p{r['subject_id']}"
                                                      / f"s{r['study_id']}" / f"{r['dicom_id']}.jpg").is_file()}
    expected = {d for d, r in on_disk.items() if r["ViewPosition"] in ("PA", "AP", "") and r["study_id"] in study_labels}
    assert sorted(examples) == sorted(expected) and len(expected) == 41
    for name, example in examples.items():
        row = on_disk[name]
        assert example["labels"].tolist() == [CELLS[study_labels[row["study_id"]][label]] for label in labels], name
        assert example["split"] == {"train": "train", "validate": "val", "test": "test"}[split_of[name]]
        assert example["patient_id"] == int(row["subject_id"]) and example["follow_up"] == follow_up[row["study_id"]]
        assert (example["age"], example["sex"], example["view"].decode()) == (MISSING, b"", row["ViewPosition"])
    assert max(e["follow_up"] for e in examples.values()) == 2 and {"train", "val", "test"} == {
        e["split"] for e in examples.values()}
    unlabelled = [d for d, r in on_disk.items() if r["study_id"] not in study_labels]
    by_view = lambda *views: sorted(d for d, r in on_disk.items() if r["ViewPosition"] in views)
    assert {reason: sorted(info["first"]) for reason, info in records.excluded.items()} == {
        "its study has no row in mimic-cxr-2.0.0-chexpert.csv.gz": unlabelled,
        "view position 'AP AXIAL' is neither frontal (PA, AP) nor lateral": by_view("AP AXIAL"),
        "lateral view (pass --laterals to keep)": by_view("LATERAL", "LL")}
    assert records.rows_without_files["count"] == len(metadata) - len(on_disk) == 2
    assert [item["reason"] for item in records.skipped] == ["no row in the label table"]


def test_mimic_negbio_labels_uncertain_and_laterals(mimic_release):
    negbio = mimic_release / "mimic-cxr-2.0.0-negbio.csv.gz"
    study_labels = {r["study_id"]: r for r in table_rows(negbio)}
    study_of = {r["dicom_id"]: r["study_id"] for r in table_rows(mimic_release / "mimic-cxr-2.0.0-metadata.csv.gz")}
    labels = harmonise.release_labels("mimic-cxr")
    assert table_rows(negbio) != table_rows(mimic_release / "mimic-cxr-2.0.0-chexpert.csv.gz")  # two labelers
    for policy, replacement in POLICIES.items():
        release = mimic_cxr.read(mimic_release, labels=negbio, uncertain=policy, laterals=True)
        assert release.label_table == negbio and sorted(release.table["view"].unique()) == ["", "AP", "LATERAL", "LL", "PA"]
        for _, film in release.table.iterrows():
            cells = study_labels[study_of[film["image_index"]]]
            for label in labels:
                want = {"1.0": 1.0, "0.0": 0.0, "": np.nan, "-1.0": replacement}[cells[label]]
                assert film[label] == want or (np.isnan(want) and np.isnan(film[label]))


@pytest.mark.parametrize("table, line, column, value, what", [
    ("split", 3, "split", "training", "split"), ("chexpert", 4, "Edema", "yes", "label"),
    ("chexpert", 2, "subject_id", "p10001000", "id"), ("metadata", 5, "StudyDate", "2150-01-01", "date")])
def test_mimic_bad_cells_are_named(tmp_path, table, line, column, value, what):
    release = write_mimic_release(tmp_path, films=8)
    path = release / f"mimic-cxr-2.0.0-{table}.csv.gz"
    edit_table(path, line, column, value)
    with pytest.raises(TableError) as error:
        mimic_cxr.read(release)
    assert str(error.value).startswith(f"{path}: line {line}: column {column!r}: {what} {value!r}")


def test_mimic_missing_column_repeated_study_and_missing_file(tmp_path):
    release = write_mimic_release(tmp_path, films=8)
    metadata, labels = release / "mimic-cxr-2.0.0-metadata.csv.gz", release / "mimic-cxr-2.0.0-chexpert.csv.gz"
    edit_table(metadata, 1, "ViewPosition", drop=True)
    with pytest.raises(TableError, match=r"metadata\.csv\.gz: line 1 \(header\) lacks the required column\(s\) \['ViewPosition'\]"):
        mimic_cxr.read(release)
    rows = table_rows(labels)
    edit_table(labels, 3, "study_id", rows[0]["study_id"])
    edit_table(labels, 3, "subject_id", rows[0]["subject_id"])
    with pytest.raises(TableError, match=r"chexpert\.csv\.gz: study .* appears on several lines \[2, 3\]"):
        mimic_cxr.read(release, labels=labels)
    (release / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv.gz not found"):
        mimic_cxr.read(release, labels=release / "mimic-cxr-2.0.0-negbio.csv.gz")
    assert mimic_cxr.looks_like(release) == "MIMIC-CXR-JPG's mimic-cxr-2.0.0-metadata.csv.gz"
