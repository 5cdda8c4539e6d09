"""tf.distribute: MirroredStrategy over two logical CPU devices, MultiWorkerMirroredStrategy
with two real worker processes on 127.0.0.1, and the sentinel for the upstream bugs
the multi-worker shim works around."""

import ast
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import synthetic_records_folder

from cxr_tf.training import distribute

REPO = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    return synthetic_records_folder(tmp_path_factory, "distribute_records", 64, 32, 32, seed=1)


def upstream_source(module, qualname):
    """The source of ``qualname`` ("function" or "Class.method") as ``module``'s installed file
    has it: unpatched, whether or not the shim has replaced it in memory."""
    text = inspect.getsource(module)
    node = ast.parse(text)
    for name in qualname.split("."):
        node = next(n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
    return ast.get_source_segment(text, node)


def test_upstream_multiworker_bugs_still_present():
    """Fails when Keras fixes keras-team/keras#20585 (tensorflow/tensorflow#72388):
    then retest `fit` under MultiWorkerMirroredStrategy without the shim and delete
    it from cxr_tf/training/distribute.py."""
    from keras.src.backend.tensorflow import trainer

    assert hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"), "patch target 1 is gone"
    assert hasattr(trainer, "reduce_per_replica"), "patch target 2 is gone"
    assert hasattr(trainer, "_collective_all_reduce_multi_worker"), "the shim's helper is gone"
    build = upstream_source(trainer, "TensorFlowTrainer._maybe_symbolic_build")
    reduce = upstream_source(trainer, "reduce_per_replica")
    broken = {
        "symbolic_build_reduces_input_batch": "self.distribute_strategy.reduce(" in build
        and "experimental_local_results" not in build,
        "scalar_logs_reduced_on_axis_0": 'strategy.reduce("MEAN", v, axis=0)' in reduce and "rank" not in reduce,
    }
    assert all(broken.values()), f"upstream changed: {broken}; check whether the multi-worker shim is still needed"


def test_shim_is_applied_only_for_multiworker(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_name("default") == "default"
    distribute.get_strategy("default")
    # the shim's replacements are defined in cxr_tf.training.distribute; upstream's in Keras
    assert trainer.reduce_per_replica.__module__ == trainer.__name__
    assert trainer.TensorFlowTrainer._maybe_symbolic_build.__module__ == trainer.__name__
    with pytest.raises(ValueError, match="strategy=multiworker needs TF_CONFIG"):
        distribute.get_strategy("multiworker")
    with pytest.raises(ValueError, match="allowed values are auto, default, mirrored, multiworker"):
        distribute.get_strategy("tpu")


def test_chief_from_tf_config(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief() and distribute.num_workers() == 2 and distribute.resolve_name("auto") == "multiworker"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief() and distribute.task_label() == "worker-1"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["h:1"], **cluster},
                                                "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief() and distribute.num_workers() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.tf_config()


def test_mirrored_over_two_logical_cpus(tiny_records, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from cxr_tf.training import config, trainer as fit
        cfg = config.load_config("simple_cnn", overrides={{
            "records": {str(tiny_records)!r}, "out": {str(tmp_path / "out")!r}, "image_size": 32,
            "batch_size": 16, "strategy": "mirrored", "verbose": 2, "phases.0.epochs": 1}})
        print("RUN", fit.train(cfg))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path(re.search(r"^RUN (.+)$", result.stdout, re.M)[1])
    assert json.loads((run / "config.json").read_text())["num_replicas"] == 2
    assert (run / "model.keras").is_file() and (run / "savedmodel" / "saved_model.pb").is_file()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multiworker_two_processes_on_loopback(tiny_records, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cxr_tf.fit", "--arch", "simple_cnn", "--records", str(tiny_records),
               "--out", str(out), "--image-size", "32", "--batch-size", "16", "--epochs", "2",
               "--strategy", "multiworker", "--set", "verbose=2"]
    procs, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        logs.append(open(tmp_path / f"worker{index}.log", "w+"))
        procs.append(subprocess.Popen(command, cwd=tmp_path, env=_env(TF_CONFIG=tf_config),
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.time() + 240
    try:
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for log in logs:
        log.close()
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {i} exit {proc.returncode}:\n{texts[i][-3000:]}"
    models = sorted(out.rglob("*.keras"))
    assert len(models) == 1, models  # the chief alone wrote a model
    run = models[0].parent
    assert not (run / "workers").exists() and (run / "savedmodel" / "saved_model.pb").is_file()
    assert "worker-1 done; the chief writes" in texts[1]
    # both workers saw the same (all-reduced) validation AUC every epoch: one model, in sync
    val_aucs = [re.findall(r"val_auc: ([0-9.]+)", text) for text in texts]
    assert len(val_aucs[0]) == 2 and val_aucs[0] == val_aucs[1]
