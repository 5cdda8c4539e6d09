"""Training end to end: `python -m cxr_tf.fit` on real and synthetic records, resume
after a kill, a learning check on synthetic films, weights none in a frozen phase, losses
and config errors.

Small on purpose (2 shared CPU cores): the simple CNN at 32 px, a few epochs."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import synthetic_records_folder

from cxr_tf.training import config as config_lib
from cxr_tf import fit as fit_cli
from cxr_tf.training import trainer as fit
from cxr_tf.data.jsonfile import write_json
from cxr_tf.data.sources import Sources
from cxr_tf.evaluation.metrics import auc_summary
from cxr_tf.training.callbacks import best_epoch, read_history
from cxr_tf.training.resume import choose_run_dir
from cxr_tf.data.labels import LABELS, NUM_LABELS
from cxr_tf.models import ARCHITECTURES
from cxr_tf.training.losses import MaskedLoss, WeightedBinaryCrossentropy, make_loss, prevalence_weights

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("model.keras", "savedmodel/saved_model.pb", "config.json", "labels.json", "thresholds.json",
           "history.csv", "training_curves.png", "metrics.json")


def fit_env():
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def fit_command(*args):
    return [sys.executable, "-m", "cxr_tf.fit", *map(str, args)]


# `python -m cxr_tf.fit ARGS` that dies as kill -9 would (no clean-up, exit status 137) after
# STEPS training steps: every Model.fit call gets one more callback. The resume test
# interrupts at the same step on any host, where a kill after a sleep could land before
# training or after it.
KILLED_FIT = textwrap.dedent("""
    import os
    import sys

    from cxr_tf import fit
    import keras

    steps_left = int(sys.argv[1])


    class DieAfterSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            global steps_left
            steps_left -= 1
            if steps_left <= 0:
                os._exit(137)


    original_fit = keras.Model.fit
    keras.Model.fit = lambda self, *args, callbacks=None, **kwargs: original_fit(
        self, *args, callbacks=[*(callbacks or []), DieAfterSteps()], **kwargs)
    sys.exit(fit.main(sys.argv[2:]))
""")


def killed_fit_command(steps, *args):
    """``fit_command(*args)`` that dies after ``steps`` training steps (``KILLED_FIT``)."""
    return [sys.executable, "-c", KILLED_FIT, str(steps), *map(str, args)]


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """Synthetic films (cxr_tf.data.synthetic) at 32 px: 384 train, 96 val, 96 test."""
    return synthetic_records_folder(tmp_path_factory, "synthetic_records", 384, 96, 96, seed=0)


# --------------------------------------------------------------------------- the command
def test_command_runs_from_a_clean_folder_and_writes_every_output(sample_records, tmp_path):
    result = subprocess.run(
        fit_command("--arch", "simple_cnn", "--records", sample_records, "--image-size", 32, "--epochs", 1,
                    "--batch-size", 16, "--set", "verbose=2"),
        cwd=tmp_path, env=fit_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "saved_models").iterdir() if p.is_dir()]
    assert len(runs) == 1 and re.fullmatch(r"simple_cnn-\d{8}-\d{6}", runs[0].name)
    run = runs[0]
    for name in OUTPUTS:
        assert (run / name).exists(), f"{name} missing from {sorted(p.name for p in run.iterdir())}"
    assert Path((tmp_path / "saved_models" / "latest").read_text().strip()) == run.resolve()
    assert "best epoch 1" in result.stdout and str(run / "model.keras") in result.stdout.splitlines()[-1]

    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "simple_cnn" and config["image_size"] == 32
    assert config["records"] == str(Path(sample_records).resolve()) and config["split_method"]
    assert json.loads((run / "labels.json").read_text()) == list(LABELS)
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert list(thresholds) == list(LABELS) and all(0 <= v <= 1 for v in thresholds.values())
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]["auc"]) == set(LABELS) and metrics["test"]["macro_auc"] is not None
    assert json.loads((run / "state.json").read_text())["status"] == "complete"
    assert not (run / "backup").exists()

    # model.keras reloads with Keras' defaults, inference-ready (no compiled loss or optimizer:
    # the losses are registered in this process, so a compile_config would compile it), and
    # predicts what fit measured; the SavedModel export agrees.
    model = keras.models.load_model(run / "model.keras")
    assert not model.compiled and getattr(model, "optimizer", None) is None
    test = fit.eval_dataset(Sources(sample_records), "test", config, multimodal=False)
    y_true, y_prob = fit._arrays(model, test)
    assert auc_summary(y_true, y_prob)["macro_auc"] == pytest.approx(metrics["test"]["macro_auc"], abs=1e-6)
    images = next(iter(test))[0]
    served = keras.layers.TFSMLayer(str(run / "savedmodel"), call_endpoint="serve")(images)
    np.testing.assert_allclose(np.asarray(served), model.predict(images, verbose=0), atol=1e-5)


def _epoch_lines(text):
    return [int(m) for m in re.findall(r"^Epoch (\d+)/\d+", text, flags=re.M)]


def test_killed_run_resumes_where_it_stopped(synthetic_records, tmp_path):
    args = ("--arch", "simple_cnn", "--records", synthetic_records, "--out", tmp_path / "runs",
            "--image-size", 32, "--batch-size", 8, "--epochs", 3, "--set", "verbose=2")
    # Dies like kill -9 after 2 epochs (48 steps each) and 5 steps of the third: epochs 1 and 2
    # are backed up, epoch 3 is under way.
    first = subprocess.run(killed_fit_command(2 * 384 // 8 + 5, *args), cwd=tmp_path, env=fit_env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 137, first.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "state.json").read_text())["status"] == "running"
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [0, 1]

    second = subprocess.run(fit_command(*args), cwd=tmp_path, env=fit_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {run}" in second.stdout
    assert _epoch_lines(second.stdout)[0] >= 2, second.stdout  # did not start again from epoch 1
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()] == [run.name]
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [0, 1, 2]
    assert json.loads((run / "state.json").read_text())["status"] == "complete"


def test_learns_synthetic_films(synthetic_records, tmp_path):
    # The multimodal CNN (BatchNorm, four blocks) learns the planted shapes fastest; it
    # also runs fit's {"image", "meta"} input path. Augmentation off: this checks learning.
    config = config_lib.load_config("multimodal", overrides={
        "records": str(synthetic_records), "out": str(tmp_path), "image_size": 32, "batch_size": 16,
        "verbose": 0, "augment": False, "phases.0.epochs": 8, "early_stopping.patience": 8,
        "reduce_lr.patience": 8})
    run = fit.train(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["macro_auc"] >= 0.9, metrics["val"]
    assert metrics["test"]["macro_auc"] >= 0.85, metrics["test"]
    best = best_epoch(read_history(run / "history.csv"))
    assert metrics["training"]["best_epoch"] == best["epoch"] + 1


def test_augmentation_in_the_train_step_saves_the_plain_model(sample_records, tmp_path, capsys):
    # augment_on: model (the default on a GPU host): fit trains AugmentedModel on 64 px
    # films cropped to 48 px in the step; the checkpoint and the export are the model alone.
    config = config_lib.load_config("simple_cnn", overrides={
        "records": str(sample_records), "out": str(tmp_path), "image_size": 48, "batch_size": 16,
        "verbose": 0, "augment_on": "model", "phases.0.epochs": 2})
    run = fit.train(config)
    assert "fit: augmentation in the train step" in capsys.readouterr().out
    model = keras.models.load_model(run / "model.keras")
    assert model.input_shape == (None, 48, 48, 1)
    assert not any("augment" in layer.name for layer in model.layers)
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [0, 1]
    assert json.loads((run / "metrics.json").read_text())["test"]["macro_auc"] is not None


def test_a_resumed_run_keeps_where_its_augmentation_ran(sample_records, tmp_path, capsys):
    # augment_on: auto means in the train step on a GPU host, in the pipeline on this
    # CPU host. A run started on a GPU host and resumed here must keep the augmentation
    # in the step: its backup holds the augmented model's state.
    config = config_lib.load_config("simple_cnn", overrides={
        "records": str(sample_records), "out": str(tmp_path), "image_size": 48, "batch_size": 16,
        "verbose": 0, "augment_on": "auto", "phases.0.epochs": 1})
    run = fit.train(config, run_name="moved")
    assert "fit: augmentation in the tf.data pipeline" in capsys.readouterr().out
    # as the GPU host left it: started with the augmentation in the step, first phase unfinished
    (run / "state.json").write_text(json.dumps({"status": "running", "phases_done": [],
                                                "augment_in_model": True}))
    assert fit.train(config, run_name="moved") == run
    out = capsys.readouterr().out
    assert f"resuming {run}" in out and "fit: augmentation in the train step" in out
    assert keras.models.load_model(run / "model.keras").input_shape == (None, 48, 48, 1)
    assert json.loads((run / "state.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("weights", ["none", "file"])
def test_weights_none_trains_the_backbone_in_the_frozen_phase(sample_records, tmp_path, capsys, weights):
    from cxr_tf.models import build_model
    from cxr_tf.training import distribute

    start = build_model("simple_cnn", image_size=32, weights=None)
    path = tmp_path / "start.weights.h5"
    start.save_weights(path)
    config = config_lib.validate(config_lib.load_config("simple_cnn", overrides={
        "records": str(sample_records), "out": str(tmp_path), "image_size": 32, "batch_size": 16, "verbose": 0,
        "augment": False, "weights": "none" if weights == "none" else str(path),
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 1e-2, "train_backbone": False}]}))
    model = build_model("simple_cnn", image_size=32, weights=None)
    model.set_weights(start.get_weights())
    before = model.get_layer("conv1").get_weights()[0].copy()
    strategy = distribute.get_strategy("default")
    data = fit._datasets(config, Sources(sample_records), False, strategy, False)
    fit._run_phases(model, config, trainer=model, loss=make_loss(config["loss"]), strategy=strategy, data=data,
                    progress=fit.Progress(tmp_path, {"phases_done": []}, time.time()))
    out = capsys.readouterr().out
    moved = np.abs(model.get_layer("conv1").get_weights()[0] - before).max()
    if weights == "none":
        assert "weights none: phase head trains the backbone too" in out and "backbone trainable" in out
        assert moved > 1e-4
    else:  # a weights file may be a pretrained backbone: its frozen phase stays frozen
        assert "backbone frozen" in out and moved == 0


# --------------------------------------------------------------------------- losses
def test_focal_loss_is_keras_class_balanced_focal():
    loss = make_loss({"name": "focal", "alpha": 0.25, "gamma": 2.0})
    assert isinstance(loss, MaskedLoss) and isinstance(loss.loss, keras.losses.BinaryFocalCrossentropy)
    assert loss.loss.get_config()["apply_class_balancing"] and loss.loss.get_config()["alpha"] == 0.25
    y = np.array([[1.0, 0.0]]), np.array([[0.9, 0.2]], dtype="float32")
    # alpha-weighted focal terms: 0.25 * 0.1**2 * -log(0.9) and 0.75 * 0.2**2 * -log(0.8), averaged
    expected = (0.25 * 0.01 * -np.log(0.9) + 0.75 * 0.04 * -np.log(0.8)) / 2
    assert float(loss(*y)) == pytest.approx(expected, rel=1e-4)


def test_weighted_bce_weights_by_inverse_prevalence_and_reloads(tmp_path):
    pos, neg = prevalence_weights([0.5, 0.1, 0.0], min_prevalence=0.01)
    np.testing.assert_allclose(pos, [1.0, 5.0, 50.0], rtol=1e-6)
    np.testing.assert_allclose(neg, [1.0, 0.5 / 0.9, 0.5 / 0.99], rtol=1e-6)
    with pytest.raises(ValueError, match="label prevalence"):
        make_loss({"name": "weighted_bce"})

    prevalence = np.linspace(0.01, 0.5, NUM_LABELS)
    loss = make_loss({"name": "weighted_bce", "min_prevalence": 0.001}, prevalence)
    y_true = np.zeros((2, NUM_LABELS), "float32")
    y_true[0, 0] = 1
    q = np.full((2, NUM_LABELS), 0.3, "float32")
    w_pos, w_neg = prevalence_weights(prevalence)
    per = -(w_pos * y_true * np.log(q) + w_neg * (1 - y_true) * np.log(1 - q))
    assert float(loss(y_true, q)) == pytest.approx(per.mean(), rel=1e-5)

    inputs = keras.Input((3,), name="image")
    model = keras.Model(inputs, keras.layers.Dense(NUM_LABELS, activation="sigmoid", name="predictions")(inputs))
    model.compile(optimizer="adam", loss=loss)
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")  # no custom_objects
    assert isinstance(reloaded.loss, MaskedLoss) and isinstance(reloaded.loss.loss, WeightedBinaryCrossentropy)
    assert reloaded.loss.loss.pos_weights == pytest.approx(list(w_pos))


# --------------------------------------------------------------------------- configs and errors
def test_every_architecture_has_a_pipeline():
    assert config_lib.available_archs() == sorted(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_pipeline_is_complete_and_valid(arch):
    config = config_lib.load_config(arch)
    assert config["arch"] == arch
    phases = [(p["learning_rate"], p["train_backbone"]) for p in config["phases"]]
    if config["weights"] is None:  # trained from scratch: one phase, everything trainable
        assert phases == [(1e-3, True)]
    else:  # an ImageNet backbone: the head first, then everything at a lower rate
        assert config["weights"] == "imagenet" and phases == [(1e-3, False), (1e-5, True)]
    assert config["loss"]["name"] == "focal" and (config["loss"]["alpha"], config["loss"]["gamma"]) == (0.25, 2.0)
    assert config["dropout"] == 0.5 and config["image_size"] == 224 and config["batch_size"] == 32


def test_overrides_and_epochs():
    config = config_lib.load_config("fusion", overrides=config_lib.parse_assignments(
        ["loss.gamma=1.5", "phases.1.learning_rate=3e-5", "augment.flip=true"]), epochs=[2, 3])
    assert config["loss"]["gamma"] == 1.5 and config["phases"][1]["learning_rate"] == 3e-5
    assert config["augment"]["flip"] is True and [p["epochs"] for p in config["phases"]] == [2, 3]


@pytest.mark.parametrize("argv, message", [
    (["--arch", "simple_cnn", "--set", "batchsize=8"], "unknown key(s) batchsize; allowed keys: arch, image_size"),
    (["--arch", "simple_cnn", "--strategy", "tpu"], "strategy='tpu': allowed values are 'auto', 'default'"),
    (["--arch", "simple_cnn", "--loss", "hinge"], "loss.name='hinge': allowed values are 'focal', 'bce'"),
    (["--arch", "simple_cnn", "--set", "augment.rotate=5"], "unknown augmentation parameter(s) ['rotate']"),
    (["--arch", "simple_cnn", "--set", "dropout=2"], "dropout=2.0: must be in [0.0, 1.0)"),
    (["--arch", "fusion", "--epochs", "1,2,3"], "3 values for 2 phases (head, finetune)"),
    (["--arch", "vgg"], "arch='vgg': no pipeline"),
    ([], "no architecture: pass --arch NAME"),
])
def test_bad_configs_fail_with_a_clear_message(argv, message, capsys):
    assert fit_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("arch: simple_cnn\nloss: {name: focal, gama: 2}\n")
    assert fit_cli.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown key(s) loss.gama; allowed keys of loss: name, alpha, gamma" in err


def test_missing_records_folder_fails_with_a_clear_message(tmp_path, capsys):
    missing = tmp_path / "no_records"
    assert fit_cli.main(["--arch", "simple_cnn", "--records", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"records folder {missing} does not exist" in err and "build_tfrecords.py" in err
    assert not (tmp_path / "out").exists()


def test_records_too_small_for_the_image_size(sample_records, tmp_path, capsys):
    assert fit_cli.main(["--arch", "simple_cnn", "--records", str(sample_records), "--image-size", "96",
                     "--out", str(tmp_path)]) == 2
    assert "image_size=96 is larger than the 64 px stored" in capsys.readouterr().err


def test_run_folder_choice(tmp_path):
    config = config_lib.load_config("simple_cnn")
    same = config_lib.resume_signature(config)
    other = config_lib.resume_signature({**config, "seed": 1})
    new_year = datetime(2026, 1, 1)
    run, resumed = choose_run_dir(tmp_path, "simple_cnn", same, now=new_year)
    assert (run.name, resumed) == ("simple_cnn-20260101-000000", False)
    run.mkdir()
    write_json(run / "config.json", config)
    write_json(run / "state.json", {"status": "running", "phases_done": []})
    assert choose_run_dir(tmp_path, "simple_cnn", same) == (run, True)  # same command: continue it
    assert choose_run_dir(tmp_path, "simple_cnn", other)[1] is False  # other settings: a new run
    assert choose_run_dir(tmp_path, "simple_cnn", same, resume=False, now=new_year)[0].name == \
        "simple_cnn-20260101-000001"
    with pytest.raises(ValueError, match="different config"):
        choose_run_dir(tmp_path, "simple_cnn", other, run_name=run.name)
    write_json(run / "state.json", {"status": "complete", "phases_done": ["train"]})
    assert choose_run_dir(tmp_path, "simple_cnn", same)[1] is False
    with pytest.raises(ValueError, match="already complete"):
        choose_run_dir(tmp_path, "simple_cnn", same, run_name=run.name)
