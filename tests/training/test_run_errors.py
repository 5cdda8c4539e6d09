"""Damaged records and bad arguments in fit and evaluate: the shard and the first
damaged record are named (not a byte offset), the run is left resumable, commands
answer one line and exit 2; history.csv has learning_rate; training time adds up
across restarts. Small on purpose: the simple CNN at 32 px on a few synthetic films."""

import contextlib
import io
import json
import re
import shutil
import struct

import pytest

from cxr_tf import evaluate as evaluate_cli
from cxr_tf import fit as fit_cli
from cxr_tf.data import manifest
from cxr_tf.data.verify import RecordsError, verify_records
from cxr_tf.evaluation.evaluate import evaluate_run
from cxr_tf.training import config as config_lib
from cxr_tf.training.callbacks import read_history
from cxr_tf.training.trainer import train


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    from cxr_tf.data.synthetic import write_synthetic_records

    out = tmp_path_factory.mktemp("small_records")
    write_synthetic_records(out, n_train=48, n_val=24, n_test=24, image_size=32, seed=0)
    return out


def small_config(records, out, epochs=1):
    return config_lib.load_config(arch="simple_cnn", overrides={
        "records": str(records), "out": str(out), "image_size": 32, "batch_size": 8, "weights": "none",
        "verbose": 0}, epochs=epochs)


@pytest.fixture(scope="module")
def resumed_run(small_records, tmp_path_factory):
    """One run through a damaged shard and a restart: fit on records whose train shard
    has a damaged record 7 (RecordsError), the shard repaired, the state edited to say
    the failed session had trained 1,000 s, fit again (it resumes and completes).
    Returns {"run", "records", "error", "state" (after the failure), "stdout" (of the resume)}."""
    base = tmp_path_factory.mktemp("resumed")
    records = base / "records"
    shutil.copytree(small_records, records)
    good = shard(records, "train").read_bytes()
    damage(shard(records, "train"), 7)
    with pytest.raises(RecordsError) as error:
        train(small_config(records, base / "runs"), run_name="r")
    run = base / "runs" / "r"
    state = json.loads((run / "state.json").read_text())
    shard(records, "train").write_bytes(good)
    (run / "state.json").write_text(json.dumps({**state, "seconds": 1000.0}))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        train(small_config(records, base / "runs"), run_name="r")
    return {"run": run, "records": records, "error": str(error.value), "state": state, "stdout": stdout.getvalue()}


def shard(records, split):
    return records / manifest.read(records).splits[split].shards[0]


def damage(path, record):
    """Flip a byte inside the data of record ``record`` (0-based) of the TFRecord ``path``:
    its CRC fails, so TensorFlow raises DataLossError naming only a byte offset."""
    data = bytearray(path.read_bytes())
    at = 0
    for _ in range(record):
        at += 16 + struct.unpack("<Q", data[at:at + 8])[0]
    data[at + 12 + 40] ^= 0xFF
    path.write_bytes(bytes(data))


def damaged_copy(records, tmp_path, split, record):
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    damage(shard(copy, split), record)
    return copy


def test_verify_records_names_the_damaged_record_not_the_one_before(small_records, tmp_path):
    records = damaged_copy(small_records, tmp_path, "val", 5)
    with pytest.raises(RecordsError, match=r"val-00000-of-00001\.tfrecord: record 5 \(its image unreadable\).*"
                                           r"5 intact record\(s\) before it"):
        verify_records(records, "val", decode=False)


def test_fit_on_a_damaged_shard_names_it_and_leaves_the_run_resumable(resumed_run):
    assert re.search(r"train-00000-of-00001\.tfrecord: record 7 \(its image unreadable\): corrupted record at "
                     r"\d+; 7 intact", resumed_run["error"]), resumed_run["error"]
    assert resumed_run["state"]["status"] == "interrupted" and "record 7" in resumed_run["state"]["error"]
    assert f"resuming {resumed_run['run']}" in resumed_run["stdout"]


def test_history_has_the_learning_rate_and_training_time_adds_up_across_restarts(resumed_run):
    run = resumed_run["run"]
    rows = read_history(run / "history.csv")
    config = json.loads((run / "config.json").read_text())
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([config["phases"][0]["learning_rate"]])
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "complete" and state["seconds"] > 1000
    minutes, seconds = map(int, re.search(r"done in (\d+)m(\d+)s", resumed_run["stdout"]).groups())
    assert 1000 < 60 * minutes + seconds < 1000 + 600  # 1,000 s before the restart + this session


def test_evaluate_on_a_damaged_shard_names_it(resumed_run, small_records, tmp_path, capsys):
    records = damaged_copy(small_records, tmp_path, "test", 3)
    with pytest.raises(RecordsError, match=r"test-00000-of-00001\.tfrecord: record 3 "):
        evaluate_run(resumed_run["run"], records, "test", tmp_path / "eval", n_boot=0)
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main(["--model", str(resumed_run["run"]), "--records", str(records), "--out",
                           str(tmp_path / "eval"), "--bootstrap", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: corrupt record in shard") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--records", "{tmp}/nowhere"], "nowhere"),
    (["--split", "testt"], "--split 'testt'"),
    (["--model", "{tmp}/no-run"], "no-run"),
])
def test_evaluate_command_bad_arguments_are_one_line_exit_2(resumed_run, small_records, tmp_path, capsys, argv,
                                                            message):
    base = {"--model": str(resumed_run["run"]), "--records": str(small_records), "--out": str(tmp_path / "eval"),
            "--bootstrap": "0"}
    for key, value in zip(argv[::2], argv[1::2]):
        base[key] = value.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main([item for pair in base.items() for item in pair])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_fit_run_name_must_be_a_folder_name(small_records, tmp_path, capsys):
    code = fit_cli.main(["--arch", "simple_cnn", "--records", str(small_records), "--out", str(tmp_path / "runs"),
                         "--run-name", "../../x", "--epochs", "1", "--image-size", "32"])
    assert code == 2 and "--run-name '../../x'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
