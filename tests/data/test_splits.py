"""cxr_tf.data.splits on the full NIH table (112,120 films) and the 150-film sample."""

import time

import numpy as np
import pandas as pd
import pytest

import gzip
import shutil

from conftest import TEST_DATA
from cxr_tf.data import splits
from cxr_tf.data.datasets import nih
from cxr_tf.data.labels import LABELS

FULL = TEST_DATA / "nih"
SAMPLE = TEST_DATA / "nih-sample"


@pytest.fixture(scope="module")
def official_lists(tmp_path_factory):
    """A folder with NIH's train_val_list.txt and test_list.txt (shipped gzipped)."""
    folder = tmp_path_factory.mktemp("lists")
    for name in ("train_val_list.txt", "test_list.txt"):
        with gzip.open(FULL / f"{name}.gz", "rb") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


@pytest.fixture(scope="module")
def full_table():
    return nih.read_label_table(FULL / "Data_Entry_2017_v2020.csv.gz")


def _patients(table, assignment, name):
    return set(table["patient_id"][(assignment == name).to_numpy()])


def _check_split(table, assignment):
    assert set(assignment.unique()) == {"train", "val", "test"}
    train, val, test = (_patients(table, assignment, n) for n in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    for name in ("train", "val", "test"):
        rows = table[(assignment == name).to_numpy()]
        assert (rows[list(LABELS)].sum() > 0).all(), f"a label has no positive in {name}"


def test_full_table_stratified_split_is_fast_and_patient_safe(full_table):
    start = time.perf_counter()
    assignment = splits.make_split(full_table, "stratified", 0.1, 0.2, seed=0)
    assert time.perf_counter() - start < 15  # about 1 s on a quiet core
    _check_split(full_table, assignment)
    shares = assignment.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.02) and shares["test"] == pytest.approx(0.2, abs=0.02)
    hernia = full_table.groupby(assignment.to_numpy())["Hernia"].sum()  # 227 films: spread like the rest
    assert hernia["test"] / 227 == pytest.approx(0.2, abs=0.06) and hernia["val"] / 227 == pytest.approx(0.1, abs=0.05)


def test_full_table_official_split(full_table, official_lists):
    assignment = splits.make_split(full_table, "official", val_fraction=0.1, seed=0, official_lists=official_lists)
    _check_split(full_table, assignment)
    test_list = set((official_lists / "test_list.txt").read_text().split())
    assert set(full_table["image_index"][(assignment == "test").to_numpy()]) == test_list
    assert (assignment == "val").mean() == pytest.approx(0.1, abs=0.01)


def test_seeded_and_reproducible():
    table = nih.read_label_table(SAMPLE / "Data_Entry_sample.csv")
    first = splits.make_split(table, seed=3)
    assert first.equals(splits.make_split(table, seed=3))
    assert not first.equals(splits.make_split(table, seed=4))
    counts = first.value_counts()  # one film per patient; iterative stratification is approximate on 150
    assert abs(counts["train"] - 105) <= 8 and abs(counts["val"] - 15) <= 5 and abs(counts["test"] - 30) <= 8


def test_leakage_is_refused():
    with pytest.raises(splits.LeakageError, match=r"1 patient\(s\).*\[7\]"):
        splits.check_no_patient_overlap([7, 7, 8], ["train", "test", "test"])
    splits.check_no_patient_overlap([7, 7, 8], ["train", "train", "test"])


def test_warns_when_a_label_has_no_positive_in_val_or_test():
    table = nih.read_label_table(SAMPLE / "Data_Entry_sample.csv")
    others = np.where(np.arange(len(table)) % 2, "val", "test")
    assignment = pd.Series(np.where(table["Hernia"] == 1, "train", others), index=table.index, dtype=object)
    with pytest.warns(UserWarning) as record:
        messages = splits.missing_label_warnings(table, assignment)
    assert [str(w.message).endswith("its AUC cannot be measured there") for w in record] == [True, True]
    assert messages == ["split 'val' has no positive film for: Hernia", "split 'test' has no positive film for: Hernia"]


def test_bad_arguments(tmp_path):
    table = nih.read_label_table(SAMPLE / "Data_Entry_sample.csv")
    with pytest.raises(ValueError, match="stratified, official"):
        splits.make_split(table, "random")
    with pytest.raises(ValueError, match="below 1"):
        splits.make_split(table, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(FileNotFoundError, match="--official-lists"):
        splits.make_split(table, "official", official_lists=tmp_path)
    (tmp_path / "train_val_list.txt").write_text("00000075_000.png\n")
    (tmp_path / "test_list.txt").write_text("")
    with pytest.raises(ValueError, match="149 image\\(s\\) are in neither official list"):
        splits.make_split(table, "official", official_lists=tmp_path)
