"""cxr_tf.data.builder / tools/build_tfrecords.py on real films: round trip, broken inputs,
resume after kill -9, the command line with and without flags."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import TEST_DATA
from releases import read_records
from cxr_tf.data import builder as build, images, manifest
from cxr_tf.data.datasets import nih
from cxr_tf.data.datasets.base import file_sha256
from cxr_tf.data.labels import LABELS

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TABLE = nih.SAMPLE_LABELS  # the embedded sample: 150 real NIH films at 128 px
FULL_SIZE = TEST_DATA / "nih-sample" / "images_001" / "images"  # 7 of them at 1024 px


def assert_matches_table(examples, table, image_size):
    rows = table.set_index("image_index")
    for name, example in examples.items():
        row = rows.loc[name]
        assert example["labels"].tolist() == row[list(LABELS)].astype(int).tolist(), name
        assert (example["patient_id"], example["age"], example["follow_up"]) == (
            row["patient_id"], row["age"], row["follow_up"])
        assert (example["sex"].decode(), example["view"].decode()) == (row["sex"], row["view"])
        image = tf.io.decode_png(example["image"]).numpy()
        assert image.shape == (image_size, image_size, 1) and image.dtype == np.uint8


def test_round_trip_of_the_150_real_films(sample_records):
    records = manifest.read(sample_records)
    table = nih.read_label_table(SAMPLE_TABLE)
    examples = read_records(sample_records)
    assert sorted(examples) == sorted(table["image_index"])  # all 150, the 6 RGBA films included
    assert_matches_table(examples, table, 64)
    assert records.labels == LABELS and records.image_size == 64 and records.dataset == "nih"
    assert records.split_method == "stratified" and records.seed == 0 and records.skipped == []
    assert records.label_table_sha256 == file_sha256(SAMPLE_TABLE)
    assert records.format_version == manifest.FORMAT_VERSION
    rows = table.set_index("image_index")
    for split, info in records.splits.items():
        names = [n for n, e in examples.items() if e["split"] == split]
        assert info.count == len(names) > 0
        assert info.patients == rows.loc[names, "patient_id"].nunique()
        assert info.label_counts == {label: int(rows.loc[names, label].sum()) for label in LABELS}
        assert info.shards == tuple(sorted(p.name for p in sample_records.glob(f"{split}-*.tfrecord")))
    train_ages = rows.loc[[n for n, e in examples.items() if e["split"] == "train"], "age"]
    assert records.age_stats() == pytest.approx((train_ages.mean(), train_ages.std(ddof=0)))
    assert not list(sample_records.glob("*.tmp"))


def test_workers_do_not_import_tensorflow():
    pool = build._worker_pool(1)
    try:
        assert "tensorflow" in sys.modules and pool.submit(images.tensorflow_loaded).result() is False
    finally:
        pool.shutdown()


def _write_table(path, rows):
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def messy_data_dir(tmp_path):
    """NIH box layout (images/...) with 6 real films (one RGBA), a 16-bit film, an
    empty, a truncated, a corrupt and a non-image file, two rows without files and
    one file without a row."""
    source = nih.read_label_table(TEST_DATA / "nih-sample" / "Data_Entry_sample.csv").set_index("image_index")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    real = ["00000075_000.png", "00013911_000.png", "00000211_000.png", "00015649_000.png",
            "00001369_000.png", "00002578_000.png"]  # 00001369 and 00002578 are RGBA
    for name in real:
        os.symlink(FULL_SIZE / name, data / "images" / name)
    film = cv2.imread(str(FULL_SIZE / real[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(data / "images" / "90000001_000.png"), film.astype(np.uint16) * 16)  # 12-bit in 16
    raw = (FULL_SIZE / real[0]).read_bytes()
    broken = {"90000002_000.png": b"", "90000003_000.png": raw[: len(raw) // 3],
              "90000004_000.png": raw[:64] + bytes(4096) + raw[-64:], "90000005_000.png": b"not a film\n"}
    for name, content in broken.items():
        (data / "images" / name).write_bytes(content)
    os.symlink(FULL_SIZE / real[1], data / "images" / "90000009_000.png")  # no row
    rows = []
    for i, name in enumerate(real + ["90000001_000.png", *broken, "90000006_000.png", "90000007_000.png"]):
        template = source.loc[real[i % len(real)]]
        rows.append([name, template["finding_labels"], 0, int(name[:8]), f"{template['age']:03d}Y",
                     template["sex"], template["view"], 1024, 1024, 0.143, 0.143])
    _write_table(data / "Data_Entry_2017.csv", rows)
    return data


@pytest.mark.filterwarnings("ignore:split")
def test_broken_inputs_are_skipped_with_reasons(messy_data_dir, tmp_path):
    out = tmp_path / "records"
    records = build.build_records(data_dir=messy_data_dir, out=out, image_size=32, workers=0, progress=False,
                                  log=lambda *_: None)
    examples = read_records(out)
    assert sorted(examples) == sorted(["00000075_000.png", "00013911_000.png", "00000211_000.png",
                                       "00015649_000.png", "00001369_000.png", "00002578_000.png",
                                       "90000001_000.png"])  # RGBA and 16-bit films built
    assert_matches_table(examples, nih.read_label_table(messy_data_dir / "Data_Entry_2017.csv"), 32)
    reasons = {Path(s["file"]).name: s["reason"] for s in records.skipped}
    assert reasons == {"90000002_000.png": "empty file", "90000003_000.png": "truncated PNG (no IEND chunk)",
                       # its zeroed middle breaks the chunk lengths: refused before decoding
                       "90000004_000.png": "damaged PNG (chunk b'IDAT' at byte 52 claims 8,192 bytes; the file has "
                                           "4,224)",
                       "90000005_000.png": "not a decodable image",
                       "90000009_000.png": "no row in the label table"}
    assert records.rows_without_files["count"] == 2
    assert (out / "rows_without_files.txt").read_text().split() == ["90000006_000.png", "90000007_000.png"]
    assert sum(s.count for s in records.splits.values()) == 7
    assert manifest.read(out) == records  # what was written reads back the same

    # same folder, other settings (given as one BuildSettings): the earlier shards are replaced, not mixed in
    settings = build.BuildSettings(data_dir=messy_data_dir, image_size=16, seed=1)
    records = build.build_records(settings, out=out, workers=0, progress=False, log=lambda *_: None)
    assert records.image_size == 16
    assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(
        n for s in records.splits.values() for n in s.shards)
    assert_matches_table(read_records(out), nih.read_label_table(messy_data_dir / "Data_Entry_2017.csv"), 16)


# The build process, its shard writer patched to die (as kill -9 would: no clean-up) right after
# writing its 40th shard: a kill after a sleep could land before or after the build on a fast host.
_DIES_AFTER_40_SHARDS = textwrap.dedent("""
    import json, os, sys
    from cxr_tf.data import builder
    write_shard, written = builder._write_shard, []

    def write_then_die(*args):
        write_shard(*args)
        written.append(args[1]["name"])
        if len(written) == 40:
            os._exit(137)

    builder._write_shard = write_then_die
    builder.build_records(progress=False, **json.loads(sys.argv[1]))
""")


@pytest.mark.filterwarnings("ignore:split")
def test_resume_after_kill_9(tmp_path):
    """One-film shards; the build process dies like kill -9 after 40 of them, then resumes."""
    out = tmp_path / "records"
    args = dict(data_dir=None, out=str(out), image_size=32, shard_size_mb=0.0005, workers=1)
    child = subprocess.run([sys.executable, "-c", _DIES_AFTER_40_SHARDS, json.dumps(args)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 137, child.stderr[-2000:]
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    assert len(done) == 40 and not list(out.glob("*.tfrecord.tmp"))
    assert not manifest.exists(out)

    records = build.build_records(progress=False, log=lambda *_: None, **args)
    assert records.build["resumed_shards"] == len(done)
    assert records.build["encoded"] == 150 - len(done)
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in done.items())  # not redone
    assert not list(out.glob("*.tmp"))
    shards = [n for s in records.splits.values() for n in s.shards]
    assert len(shards) == 150 and sorted(shards) == sorted(p.name for p in out.glob("*.tfrecord"))
    examples = read_records(out)  # every shard parses completely: no partial shard under a final name
    assert len(examples) == 150
    assert_matches_table(examples, nih.read_label_table(SAMPLE_TABLE), 32)


def _cli():
    from cxr_tf import build as build_cli  # noqa: PLC0415

    return build_cli


@pytest.mark.filterwarnings("ignore:split")
def test_cli_without_flags_builds_the_embedded_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _cli().main(["--no-progress", "--image-size", "48"]) == 0
    records = manifest.read(tmp_path / "records")
    assert records.image_size == 48 and records.skipped == []
    assert sum(s.count for s in records.splits.values()) == 150
    assert Path(records.data_dir) == nih.SAMPLE_DIR
    assert len(list((tmp_path / "records").glob("*.tfrecord"))) == 3


def test_cli_parses_every_flag_and_reports_errors(tmp_path, capsys):
    cli = _cli()
    args = cli.parse_args(["--data-dir", "d", "--labels", "l.csv", "--official-lists", "o", "--out", "r",
                           "--image-size", "128", "--split", "official", "--val-fraction", "0.05",
                           "--test-fraction", "0.3", "--seed", "7", "--workers", "3", "--shard-size-mb", "64"])
    assert (args.image_size, args.split, args.seed, args.workers, args.shard_size_mb) == (128, "official", 7, 3, 64)
    assert cli.parse_args([]).out == Path("records") and cli.parse_args([]).image_size == 256
    assert cli.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a release's own option (its adapter's OPTIONS) is a flag, refused for the other releases
    assert cli.parse_args(["--aggregate", "any"]).aggregate == "any" and cli.parse_args([]).aggregate is None
    assert cli.main(["--aggregate", "any", "--out", str(tmp_path / "r")]) == 2
    assert "--aggregate applies to --dataset vindr-cxr, not to nih" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
