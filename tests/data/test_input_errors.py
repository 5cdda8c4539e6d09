"""Bad inputs outside the films: label tables (gzip, BOM, encoding, empty), and the
acceptance rule the builder shares with predict. Each names the file and the fix."""

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_tf.data.datasets import nih
from cxr_tf.data.images import FilmLimits, film_problem, film_to_png
from cxr_tf.inference.readers import FilmError, read_film

SAMPLE = Path(__file__).resolve().parents[2] / "cxr_tf" / "sample"
TABLE = SAMPLE / "Data_Entry_sample.csv"


@pytest.fixture(scope="module")
def table():
    return nih.read_label_table(TABLE)


def test_gzip_recognised_by_content_and_bom_dropped(table, tmp_path):
    plain_named_gz = tmp_path / "Data_Entry_2017.csv.gz"
    plain_named_gz.write_bytes(TABLE.read_bytes())
    assert nih.read_label_table(plain_named_gz).equals(table)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + TABLE.read_bytes())  # Excel's "CSV UTF-8" byte-order mark
    assert nih.read_label_table(excel).equals(table)


@pytest.mark.parametrize("name, content, message", [
    ("cut.csv.gz", lambda: gzip.compress(TABLE.read_bytes())[:-40], "damaged gzip file .*download the table again"),
    ("latin1.csv", lambda: TABLE.read_bytes().replace(b"Cardiomegaly", "Cardiomégaly".encode("latin-1"), 1),
     "line [0-9]+ is not UTF-8 text .*save the table as UTF-8"),
    ("header.csv", lambda: TABLE.read_bytes().split(b"\n")[0] + b"\n", "has a header but no rows"),
    ("empty.csv", lambda: b"", "empty file"),
])
def test_bad_tables_name_the_file_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(nih.TableError, match=f"{path}: {message}"):
        nih.read_label_table(path)


def test_latin1_error_names_the_right_line(tmp_path):
    lines = TABLE.read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b"|", "|\xe9".encode("latin-1"), 1) if b"|" in lines[7] else lines[7] + b"\xe9"
    path = tmp_path / "t.csv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(nih.TableError, match="line 8 is not UTF-8"):
        nih.read_label_table(path)


@pytest.mark.parametrize("shape, reason", [((40000, 64), "a side above 12000 px"), ((4000, 64), "aspect ratio"), ((1, 1), "too small"),
                                           ((32, 32), "too small")])
def test_builder_skips_what_predict_refuses(tmp_path, shape, reason):
    """One rule (FilmLimits): the builder's worker task and predict refuse the same films."""
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), np.full(shape, 100, np.uint8))
    png, why = film_to_png(path, 64)
    assert png is None and reason in why
    with pytest.raises(FilmError, match=reason):
        read_film(path)
    assert film_to_png(SAMPLE / "images" / "00000075_000.png", 64)[0] is not None


def test_bit_depth_is_part_of_the_rule():
    assert film_problem(512, 512, bits=32).startswith("32 bits per pixel")
    assert film_problem(512, 512, bits=12) is None
    assert film_problem(512, 512, FilmLimits(max_bits=8), bits=12) is not None


# ------------------------------------------------------------------ builder

def children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to see the worker processes")
def test_killed_build_leaves_no_worker_processes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "records"
    script = ("from cxr_tf.data.builder import build_records; "
              f"build_records(out={str(out)!r}, image_size=64, workers=2, shard_size_mb=0.05, progress=False)")
    env = {**os.environ, "PYTHONPATH": str(SAMPLE.parents[1])}
    for attempt in ("first build", "resumed build"):  # a killed build resumes; kill the resumed one too
        build = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(children(build.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + resource tracker
            time.sleep(0.05)
        spawned = children(build.pid)
        build.send_signal(signal.SIGKILL)
        build.wait()
        assert len(spawned) >= 2, f"{attempt}: the worker processes never started"
        deadline = time.monotonic() + 10
        while any(alive(p) for p in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in spawned if alive(p)], f"{attempt}: worker processes outlived the killed build"


def test_shards_whose_films_are_all_unreadable_are_not_written(tmp_path):
    from cxr_tf.data.builder import build_records

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = TABLE.read_text().splitlines()
    rows = lines[1:13]
    for i, row in enumerate(rows):
        name = row.split(",")[0]
        target = data / "images" / name
        if i % 3 == 0:
            target.write_bytes(b"not a film")  # unreadable
        else:
            target.write_bytes((SAMPLE / "images" / name).read_bytes())
    (data / "Data_Entry_2017.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    with pytest.warns(UserWarning, match="its AUC cannot be measured there"):  # 8 films: splits lack positives
        records = build_records(data_dir=data, out=tmp_path / "records", image_size=64, workers=0,
                                shard_size_mb=0.001, progress=False, log=lambda *_: None)
    assert records.warnings  # and the manifest says so
    shards = sorted((tmp_path / "records").glob("*.tfrecord"))
    assert shards and all(p.stat().st_size > 0 for p in shards)
    listed = [name for split in records.splits.values() for name in split.shards]
    assert sorted(listed) == [p.name for p in shards]
    assert sum(s.count for s in records.splits.values()) == 8
    assert len([s for s in records.skipped if "not a" in s["reason"] or "decod" in s["reason"]]) == 4
    # A resumed build keeps the empty shards' records and writes nothing new.
    with pytest.warns(UserWarning, match="its AUC cannot be measured there"):
        again = build_records(data_dir=data, out=tmp_path / "records", image_size=64, workers=0,
                              shard_size_mb=0.001, progress=False, log=lambda *_: None)
    assert again.build["encoded"] == 0 and again.splits == records.splits
