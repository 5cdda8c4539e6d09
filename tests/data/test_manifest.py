"""cxr_tf.data.manifest: the one schema, reader and writer of a records folder's manifest; the
files written before (older keys, older versions) still read."""

import dataclasses
import json

import pytest

from cxr_tf.data import manifest
from cxr_tf.data.labels import LABELS

# A manifest as the builder has written it since format_version 2 (the on-disk format, key by key).
BUILT = {
    "format_version": 2, "dataset": "chexpert", "labels": ["Atelectasis", "Pleural Effusion"],
    "harmonised": {"Atelectasis": "Atelectasis", "Pleural Effusion": "Effusion"},
    "options": {"uncertain": "ignore", "laterals": False}, "image_size": 64,
    "splits": {"train": {"num_examples": 10, "num_patients": 7,
                         "label_counts": {"Atelectasis": 2, "Pleural Effusion": 3},
                         "label_known": {"Atelectasis": 9, "Pleural Effusion": 10},
                         "shards": ["train-00000-of-00001.tfrecord"]}},
    "seed": 0, "split_method": "official", "val_fraction": 0.1, "test_fraction": 0.0,
    "label_table": "/data/train.csv", "label_table_sha256": "ab" * 32, "data_dir": "/data",
    "skipped": [{"file": "/data/x.jpg", "reason": "empty file"}],
    "rows_without_files": {"count": 1, "list": "rows_without_files.txt", "first": ["y.jpg"]},
    "excluded": {"lateral view (pass --laterals to keep)": {"count": 1, "first": ["z.jpg"]}},
    "metadata": {"age_mean": 61.5, "age_std": 0.0}, "warnings": ["split 'test' is empty"],
    "build": {"seconds": 1.0, "encoded": 10, "resumed_shards": 0, "images_per_s": 10.0, "workers": 1},
}

# One written before format_version, datasets other than NIH, missing labels and age statistics.
VERSION_1 = {"labels": list(LABELS), "image_size": 128,
             "splits": {"val": {"num_examples": 4, "num_patients": 4, "label_counts": dict.fromkeys(LABELS, 1),
                                "shards": [{"name": "val-00000-of-00001.tfrecord"}]}}}


def test_what_is_written_reads_back_and_keeps_the_format(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(BUILT))
    m = manifest.read(tmp_path)
    assert m.dataset == "chexpert" and m.labels == ("Atelectasis", "Pleural Effusion") and m.image_size == 64
    train = m.splits["train"]
    assert (train.count, train.patients, train.shards) == (10, 7, ("train-00000-of-00001.tfrecord",))
    assert train.known("Atelectasis") == 9 and train.label_counts["Pleural Effusion"] == 3
    assert m.age_stats() == (61.5, 1.0)  # a zero spread standardises by 1
    assert m.to_json() == BUILT and list(m.to_json()) == list(BUILT)  # same keys, same order
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest.write(copy, m)
    assert json.loads(manifest.path(copy).read_text()) == BUILT
    assert manifest.read(copy) == m and manifest.exists(copy)


def test_older_manifests_read_with_their_defaults(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(VERSION_1))
    m = manifest.read(tmp_path)
    assert m.format_version == 1 and m.dataset == "nih" and m.harmonised == {} and m.split_method is None
    assert m.splits["val"].shards == ("val-00000-of-00001.tfrecord",)  # shards once were objects
    assert m.splits["val"].known("Hernia") == 4  # no label_known: every label known
    with pytest.raises(ValueError, match="metadata.age_mean"):
        m.age_stats()
    manifest.write(tmp_path, m)  # rewritten at the current version
    assert manifest.read(tmp_path).format_version == manifest.FORMAT_VERSION
    assert dataclasses.replace(manifest.read(tmp_path), format_version=1) == m


def test_unreadable_manifests_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="records folder .*nowhere does not exist; build them"):
        manifest.read(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="manifest.json not found: .* is not a records folder"):
        manifest.read(tmp_path)
    assert not manifest.exists(tmp_path)
    file = manifest.path(tmp_path)
    file.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        manifest.read(tmp_path)
    file.write_text(json.dumps({"labels": [], "splits": {}}))
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['image_size'\]; rebuild the records"):
        manifest.read(tmp_path)
    file.write_text(json.dumps({**VERSION_1, "splits": {"val": {"num_examples": "many"}}}))
    with pytest.raises(ValueError, match="manifest.json: a value does not have the expected type"):
        manifest.read(tmp_path)
    manifest.remove(tmp_path)
    assert not file.exists()


def test_records_folders_read_as_one_store_one_size(tmp_path):
    small, large = (manifest.Manifest(labels=LABELS, image_size=size, splits={}) for size in (64, 128))
    assert manifest.common_image_size(["a", "b"], [small, small]) == 64
    with pytest.raises(ValueError, match=r"store films of different sizes \[64, 128\] px"):
        manifest.common_image_size(["a", "b"], [small, large])
