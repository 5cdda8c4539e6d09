"""Issue 6: data exploration from a real NIH label table and from records."""

import json
import time

import numpy as np
import pytest

from cxr_tf import explore as explore_cli
from cxr_tf.evaluation import explore
from cxr_tf.data.labels import LABELS, NO_FINDING

from conftest import TEST_DATA

FULL_TABLE = TEST_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz"
SAMPLE_2017 = TEST_DATA / "nih-sample" / "Data_Entry_sample_2017_layout.csv"
FIGURES = ("label_distribution", "cooccurrence", "findings_per_film", "age", "sex", "view")


def _check_outputs(out, summary):
    for key in FIGURES:
        path = out / summary["figures"][key]
        assert path.is_file() and path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG", key
    md = (out / "explore.md").read_text()
    for key in FIGURES:
        assert f"]({summary['figures'][key]})" in md
    assert json.loads((out / "summary.json").read_text())["films"] == summary["films"]


def test_full_nih_table_in_seconds(tmp_path):
    start = time.perf_counter()
    summary = explore.explore(tmp_path, labels=FULL_TABLE)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"explore on the full table took {seconds:.1f} s"
    assert summary["films"] == 112_120 and summary["patients"] == 30_805
    assert summary["sex"]["M"] + summary["sex"]["F"] == 112_120
    assert summary["view"]["PA"] + summary["view"]["AP"] == 112_120
    assert summary["label_counts"]["Hernia"] == 227 and summary["label_counts"]["Infiltration"] == 19_894
    co = np.array(summary["cooccurrence"])
    assert (co == co.T).all() and list(np.diag(co)) == [summary["label_counts"][n] for n in LABELS]
    assert summary[NO_FINDING] == summary["findings_per_film"]["0"] == 60_361
    _check_outputs(tmp_path, summary)


def test_2017_layout_sample_table(tmp_path):
    assert explore_cli.main(["--labels", str(SAMPLE_2017), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["films"] == 150 and summary[NO_FINDING] == 22
    assert min(summary["label_counts"].values()) >= 6


def test_records_folder_per_split(tmp_path):
    from cxr_tf.data.synthetic import write_synthetic_records

    records = tmp_path / "records"
    written = write_synthetic_records(records, n_train=20, n_val=8, n_test=10, image_size=16, seed=1)
    summary = explore.explore(tmp_path / "out", records=records)
    assert summary["films"] == 38
    for split in ("train", "val", "test"):
        assert summary["splits"][split]["films"] == written.splits[split].count
        assert summary["splits"][split]["label_counts"] == written.splits[split].label_counts
    _check_outputs(tmp_path / "out", summary)


def test_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        explore.explore(tmp_path)
