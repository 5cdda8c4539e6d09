"""Training: ``python -m cxr_tf.fit --arch fusion`` (library entry: ``train(config)``).

Reads ``pipelines/<arch>.yaml`` (``cxr_tf.training.config``), trains in the config's phases
(two for the pre-trained backbones: the head with the backbone frozen at 1e-3, then
everything at 1e-5; one for the simple and multimodal CNNs) and writes one run
folder ``<out>/<arch>-<YYYYmmdd-HHMMSS>/``:

================== =============================================================
model.keras        best weights (validation macro AUC) over all phases
savedmodel/        ``model.export``: inference SavedModel (endpoint ``serve``)
config.json        the resolved config + ``split_method``, data counts, versions
labels.json        the 14 findings in output order
thresholds.json    per-finding thresholds chosen on validation (``cxr_tf.evaluation.evaluate``)
history.csv        one row per epoch: phase, epoch, loss, auc, val_*, learning_rate
training_curves.png loss and AUC, train vs validation (``cxr_tf.evaluation.plots``)
metrics.json       test (and validation) per-finding and macro AUC of model.keras
state.json         progress (``running`` / ``complete``), for restarts
================== =============================================================

and points ``<out>/latest`` at it. Restarts: a run killed at any point and started
again with the same command continues: ``train`` picks the newest incomplete run of
the same arch whose config matches (or the run ``--run-name`` names), skips the
finished phases and ``BackupAndRestore`` resumes the phase from its last epoch.

Augmentation (``augment:``) runs where ``augment_on`` says: in the tf.data pipeline
on the host CPU, or inside the train step on the accelerator (``AugmentedModel``; the
default on a GPU host); either way the saved model is the plain one.

Multi-worker (``--strategy multiworker`` with ``TF_CONFIG``): every worker runs the
same command; the chief writes the run folder, the other workers keep their
checkpoints in ``<run>/workers/<task>/`` and delete it when done.
"""

import contextlib
import csv
import importlib.util
import math
import re
import shutil
import time
import warnings
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.data.jsonfile import read_json, write_json
from cxr_tf.training import config as config_lib
from cxr_tf.training import distribute
from cxr_tf.data.labels import LABELS, NUM_LABELS

MONITOR = "val_auc"
HISTORY = "history.csv"
STATE = "state.json"
MODEL = "model.keras"
RUN_NAME_RE = re.compile(r"^(?P<arch>.+)-(?P<stamp>\d{8}-\d{6})$")


# --------------------------------------------------------------------------- run folders
def _stamp_to_int(stamp):
    return int(stamp.replace("-", ""))


def _int_to_stamp(value):
    digits = f"{int(value):014d}"
    return f"{digits[:8]}-{digits[8:]}"


def _resumable(run_dir, signature):
    """Whether ``run_dir`` is an unfinished run started with the same config signature."""
    state = read_json(run_dir / STATE, {})
    saved = read_json(run_dir / "config.json")
    if state.get("status") == "complete" or saved is None:
        return False
    saved_signature = config_lib.resume_signature({k: saved.get(k) for k in config_lib.SCHEMA})
    return saved_signature == signature


def choose_run_dir(out, arch, signature, run_name=None, resume=True, now=None):
    """(run folder, resumed) for a new or restarted run (chief's choice).

    run_name: an explicit folder name under ``out``: resumed when it holds an
    unfinished run of the same config; an error when it is complete or differs.
    Otherwise the newest unfinished ``<arch>-<timestamp>`` run with the same config
    is resumed (unless ``resume`` is False), else a new timestamped folder is named.
    """
    out = Path(out)
    if run_name:
        if "/" in run_name or run_name in (".", ".."):
            raise ValueError(f"--run-name {run_name!r}: a folder name, not a path")
        run_dir = out / run_name
        if not run_dir.exists():
            return run_dir, False
        if read_json(run_dir / STATE, {}).get("status") == "complete":
            raise ValueError(f"run {run_dir} is already complete; choose another --run-name or remove it")
        if not _resumable(run_dir, signature):
            raise ValueError(f"run {run_dir} was started with a different config ({run_dir / 'config.json'}); "
                             "restart it with the same settings or choose another --run-name")
        return run_dir, True
    if resume and out.is_dir():
        candidates = sorted((p for p in out.iterdir() if p.is_dir() and (m := RUN_NAME_RE.match(p.name))
                             and m["arch"] == arch), key=lambda p: p.name, reverse=True)
        for run_dir in candidates:
            if _resumable(run_dir, signature):
                return run_dir, True
    stamp = now or datetime.now()
    run_dir = out / f"{arch}-{stamp:%Y%m%d-%H%M%S}"
    while run_dir.exists():  # two runs in one second
        stamp = datetime.fromtimestamp(stamp.timestamp() + 1)
        run_dir = out / f"{arch}-{stamp:%Y%m%d-%H%M%S}"
    return run_dir, False


def _is_chief(strategy):
    """Whether this process writes the run folder: always, unless it is a non-chief
    worker of a multi-worker strategy."""
    return distribute.is_chief() or not distribute.is_multiworker(strategy)


def _agree_on_run_dir(strategy, out, arch, signature, run_name, resume):
    """The chief chooses the run folder; under multi-worker the others get its timestamp."""
    chief = _is_chief(strategy)
    if chief:
        run_dir, resumed = choose_run_dir(out, arch, signature, run_name, resume)
    else:
        run_dir, resumed = Path(out) / (run_name or f"{arch}-00000000-000000"), False
    if run_name or not distribute.is_multiworker(strategy):
        return run_dir, resumed
    stamp = RUN_NAME_RE.match(run_dir.name)["stamp"] if chief else "00000000-000000"
    agreed = distribute.chief_value(strategy, _stamp_to_int(stamp))
    return Path(out) / f"{arch}-{_int_to_stamp(agreed)}", resumed


# --------------------------------------------------------------------------- history
class EpochLog(keras.callbacks.Callback):
    """history.csv with one row per epoch, keyed by the global epoch number: a
    restarted epoch replaces its row (Keras' CSVLogger would append it twice).
    Columns: phase, epoch, then the Keras logs (loss, auc, val_loss, val_auc,
    learning_rate)."""

    def __init__(self, path, phase):
        super().__init__()
        self.path = Path(path)
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        rows = read_history(self.path)
        row = {"phase": self.phase, "epoch": epoch}
        for key, value in (logs or {}).items():
            row[key] = float(np.asarray(value))
        rows = [r for r in rows if int(r["epoch"]) < epoch] + [row]
        columns = ["phase", "epoch"]
        for r in rows:
            columns += [k for k in r if k not in columns]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``x.partial.keras`` and renames it to ``x.keras``,
    so a run killed while saving keeps its previous best model intact. ``model``: the
    model to save when ``fit`` runs a wrapper of it (``cxr_tf.data.augment.AugmentedModel``)."""

    def __init__(self, filepath, model=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self._saved_model = model

    def set_model(self, model):
        super().set_model(self._saved_model or model)

    def _partial(self, path):
        return str(path)[: -len(".keras")] + ".partial.keras"

    def _get_file_path(self, epoch, batch, logs):
        return self._partial(super()._get_file_path(epoch, batch, logs))

    def _save_model(self, epoch, batch, logs):
        super()._save_model(epoch, batch, logs)
        partial = Path(self._partial(self.filepath))
        if partial.exists():
            partial.replace(self.filepath)


def read_history(path):
    """Rows of history.csv as dicts (``epoch`` int, ``phase`` str, the rest float); [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key != "phase" and value not in ("", None):
                row[key] = int(float(value)) if key == "epoch" else float(value)
    return rows


def best_epoch(rows):
    """The history row with the highest validation AUC (None if there is none)."""
    scored = [r for r in rows if isinstance(r.get(MONITOR), float) and math.isfinite(r[MONITOR])]
    return max(scored, key=lambda r: r[MONITOR]) if scored else None


# --------------------------------------------------------------------------- model
def _architecture(arch):
    from cxr_tf.models import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise config_lib.ConfigError(f"arch={arch!r}: allowed values are {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def _multimodal(spec):
    return bool(spec.get("multimodal") if isinstance(spec, dict) else getattr(spec, "multimodal", False))


def precision_policy(setting):
    """The Keras dtype policy name for the ``mixed_precision`` config value."""
    if setting is False:
        return "float32"
    if setting is True:
        return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    return setting


def _compile(model, loss, learning_rate, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss,
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=NUM_LABELS, name="auc")],
        jit_compile=jit_compile,
    )
    # Create the optimizer's slots now: left to fit(), they are made inside the first trace
    # of the train step, which tf.function then traces a second time (measured on
    # densenet121 on CPU: first epoch 130 s -> 33 s).
    model.optimizer.build(model.trainable_variables)


def _load_best(model, path):
    """Load the weights of the best checkpoint into ``model``. Its optimizer state may
    belong to another phase (other trainable variables): Keras then skips it with a
    warning, which is expected here and silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


# --------------------------------------------------------------------------- evaluation
def _arrays(model, dataset):
    """(y_true, y_prob) float arrays (N, 14) over a deterministic evaluation dataset."""
    y_true = np.concatenate([y.numpy() for _, y in dataset], axis=0)
    y_prob = model.predict(dataset.map(lambda x, y: x), verbose=0)
    return y_true, np.clip(np.asarray(y_prob, dtype=np.float64), 0.0, 1.0)


def auc_summary(y_true, y_prob):
    """{"num_examples", "auc": {finding: float | None}, "macro_auc", "excluded": {finding: reason}}:
    findings without positives (or negatives) have no AUC and are left out of the macro mean."""
    from cxr_tf.evaluation import metrics

    per_class = metrics.roc_auc(y_true, y_prob)
    excluded = {name: metrics.undefined_reason(np.asarray(y_true)[:, k]) for k, name in enumerate(LABELS)
                if per_class[name] is None}
    defined = [v for v in per_class.values() if v is not None]
    return {"num_examples": int(len(y_true)), "auc": per_class,
            "macro_auc": float(np.mean(defined)) if defined else None, "excluded": excluded}


# --------------------------------------------------------------------------- training
def _num_batches(manifest, split, batch_size, training):
    n = int(manifest["splits"][split]["num_examples"])
    return n // batch_size if training else math.ceil(n / batch_size)


def eval_dataset(records, manifest, split, config, multimodal, cache=None):
    """The deterministic evaluation dataset of ``split``, with its batch count known to
    Keras (progress bars; no "ran out of data" warnings)."""
    from cxr_tf.data.pipeline import make_dataset

    ds = make_dataset(records, split, batch_size=config["batch_size"], image_size=config["image_size"],
                      training=False, multimodal=multimodal, cache=cache)
    steps = _num_batches(manifest, split, config["batch_size"], training=False)
    return ds.apply(tf.data.experimental.assert_cardinality(steps))


def augment_in_model(config):
    """True when augmentation runs inside the train step (``augment_on``: "model", or
    "auto" with a GPU visible), False when in the tf.data pipeline or off."""
    if config["augment"] is False:
        return False
    if config["augment_on"] == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return config["augment_on"] == "model"


def _datasets(config, records, manifest, multimodal, strategy, in_model):
    """(train, val, steps_per_epoch, validation_steps). Multi-worker: repeated datasets
    with fixed step counts, so every worker runs the same number of steps. With the
    augmentation in the model, the training films come un-augmented at the stored size
    (``in_model``: the model's random resized crop takes them to ``image_size``)."""
    from cxr_tf.data.pipeline import make_dataset

    cache = config["cache"] or None
    train_ds = make_dataset(records, "train", batch_size=config["batch_size"],
                            image_size=int(manifest["image_size"]) if in_model else config["image_size"],
                            training=True, multimodal=multimodal, augment=False if in_model else config["augment"],
                            seed=config["seed"], shuffle_buffer=config["shuffle_buffer"], cache=cache)
    steps = _num_batches(manifest, "train", config["batch_size"], training=True)
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps))
    val_ds = eval_dataset(records, manifest, "val", config, multimodal,
                          cache=cache if cache in (True, "memory") else None)
    if not distribute.is_multiworker(strategy):
        return train_ds, val_ds, None, None
    return train_ds.repeat(), val_ds.repeat(), steps, len(val_ds)


def _check_records(config, records, manifest):
    """ConfigError when the records cannot feed this config (before any training)."""
    where = records / "manifest.json"
    splits = manifest["splits"]
    for split in ("train", "val"):
        if int(splits.get(split, {}).get("num_examples", 0)) <= 0:
            raise config_lib.ConfigError(f"{where}: split {split!r} is missing or empty; fit needs train and val "
                                         "(and test for metrics.json); rebuild the records")
    stored = int(manifest["image_size"])
    if config["image_size"] > stored:
        raise config_lib.ConfigError(f"image_size={config['image_size']} is larger than the {stored} px stored in "
                                     f"{records}; pass --image-size {stored} or less, or rebuild the records "
                                     f"with tools/build_tfrecords.py --image-size {config['image_size']}")
    if config["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        raise config_lib.ConfigError("tensorboard: true needs the tensorboard package (pip install tensorboard), "
                                     "which tensorflow-cpu does not bring")
    n_train = int(splits["train"]["num_examples"])
    if config["batch_size"] > n_train:
        raise config_lib.ConfigError(f"batch_size={config['batch_size']} is larger than the {n_train} training "
                                     f"films in {records}; pass --batch-size {n_train} or less")


def _resolved_config(config, records, manifest, strategy, run_dir):
    return {
        **config,
        "records": str(records),
        "out": str(Path(config["out"]).expanduser().resolve()),
        "split_method": manifest.get("split_method"),
        "records_image_size": int(manifest["image_size"]),
        "num_examples": {s: int(v.get("num_examples", 0)) for s, v in manifest["splits"].items()},
        "labels": list(LABELS),
        "run_dir": str(run_dir),
        "num_replicas": int(strategy.num_replicas_in_sync),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def train(config, run_name=None, resume=True):
    """Train one run; returns its folder (Path). See the module docstring.

    config: a config dict (``cxr_tf.training.config.load_config``; validated again here).
    run_name: fixed run folder name under ``config["out"]`` (default
    ``<arch>-<timestamp>``). resume: continue the newest unfinished run with the same
    config (False: always start a new one). Raises ConfigError / ValueError /
    FileNotFoundError with the reason and the fix before any training starts.
    """
    started = time.time()
    config = config_lib.validate(config)
    # A multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = distribute.get_strategy(config["strategy"])
    from cxr_tf.data import pipeline as data
    from cxr_tf.training.losses import make_loss

    records = Path(config["records"]).expanduser().resolve()
    manifest = data.read_manifest(records)  # FileNotFoundError naming the folder and the fix
    _check_records(config, records, manifest)
    from cxr_tf.models import build_model, set_backbone_trainable

    spec = _architecture(config["arch"])
    multimodal = _multimodal(spec)
    chief = _is_chief(strategy)

    signature = config_lib.resume_signature({**config, "records": str(records)})
    out = Path(config["out"]).expanduser().resolve()
    run_dir, resumed = _agree_on_run_dir(strategy, out, config["arch"], signature, run_name, resume)
    work_dir = run_dir if chief else run_dir / "workers" / distribute.task_label()
    work_dir.mkdir(parents=True, exist_ok=True)
    if chief and not resumed:
        write_json(run_dir / "config.json", _resolved_config(config, records, manifest, strategy, run_dir))
        write_json(run_dir / "labels.json", list(LABELS))
    state = read_json(work_dir / STATE, {"status": "running", "phases_done": []})
    # Where augmentation runs is decided once per run and recorded: a run started on a GPU
    # host ("auto" -> in the model) and resumed on a CPU host keeps it, so its backup fits.
    in_model = state.setdefault("augment_in_model", augment_in_model(config))
    write_json(work_dir / STATE, {**state, "status": "running"})
    if resumed:
        print(f"fit: resuming {run_dir} (phases done: {', '.join(state['phases_done']) or 'none'})", flush=True)

    keras.utils.set_random_seed(config["seed"])
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(config["mixed_precision"]))
    try:
        prevalence = data.label_prevalence(manifest, "train") if config["loss"]["name"] == "weighted_bce" else None
        loss = make_loss(config["loss"], prevalence)
        train_ds, val_ds, steps, val_steps = _datasets(config, records, manifest, multimodal, strategy, in_model)
        with strategy.scope():
            model = build_model(config["arch"], image_size=config["image_size"], num_labels=NUM_LABELS,
                                weights=config["weights"], dropout=config["dropout"],
                                mc_dropout=config["mc_dropout"])
            trainer = model
            if in_model:
                from cxr_tf.data.augment import AugmentedModel, build_augmenter

                augmenter = build_augmenter(config["augment"], config["image_size"], seed=config["seed"])
                trainer = AugmentedModel(model, augmenter, name=f"{model.name}_augmented")
        where = "in the train step" if trainer is not model else "in the tf.data pipeline"
        print(f"fit: augmentation {'off' if config['augment'] is False else where}", flush=True)
        _run_phases(model, trainer, config, loss, strategy, train_ds, val_ds, steps, val_steps, work_dir, state,
                    set_backbone_trainable)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    if not chief:
        # Each worker removes its own folder (the chief may still be training or
        # exporting), and the shared workers/ folder once it is empty.
        shutil.rmtree(work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            work_dir.parent.rmdir()
        print(f"fit: {distribute.task_label()} done; the chief writes {run_dir}", flush=True)
        return run_dir
    _finish(run_dir, config, records, manifest, multimodal, started)
    return run_dir


def _run_phases(model, trainer, config, loss, strategy, train_ds, val_ds, steps, val_steps, work_dir, state,
                set_backbone_trainable):
    """Train ``trainer`` (``model`` or ``model`` behind the augmenter) phase by phase;
    the best checkpoint holds ``model`` itself."""
    best_path = work_dir / MODEL
    history_path = work_dir / HISTORY
    verbose = config["verbose"]
    frozen = False  # models are built fully trainable; one-phase CNNs never touch their backbone
    for phase in config["phases"]:
        name = phase["name"]
        if name in state["phases_done"] or phase["epochs"] == 0:
            continue
        rows = read_history(history_path)
        done_before = [r for r in rows if r["phase"] != name]
        initial_epoch = int(max((r["epoch"] for r in done_before), default=-1)) + 1
        best = best_epoch(rows)
        with strategy.scope():
            if frozen or not phase["train_backbone"]:
                set_backbone_trainable(model, phase["train_backbone"])
                frozen = not phase["train_backbone"]
            if best_path.is_file():
                _load_best(model, best_path)  # each phase starts from the best weights so far
            _compile(trainer, loss, phase["learning_rate"], config["jit_compile"])
        backup_dir = work_dir / "backup" / name
        # Order matters at the end of an epoch: history row and best model are written
        # before the backup records the epoch as done, so a restart never skips them.
        callbacks = [
            EpochLog(history_path, name),
            AtomicModelCheckpoint(str(best_path), model=model, monitor=MONITOR, mode="max", save_best_only=True,
                                  initial_value_threshold=best[MONITOR] if best else None),
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config["early_stopping"]["patience"]),
            keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=config["reduce_lr"]["factor"],
                                              patience=config["reduce_lr"]["patience"],
                                              min_lr=config["reduce_lr"]["min_lr"]),
            # The backup outlives fit() until the phase is recorded as done, so a kill in
            # between does not run the phase again.
            keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=config["backup_every"],
                                             delete_checkpoint=False),
        ]
        if config["tensorboard"] and _is_chief(strategy):
            callbacks.append(keras.callbacks.TensorBoard(str(work_dir / "tensorboard" / name)))
        print(f"fit: phase {name}: {phase['epochs']} epoch(s) at learning rate {phase['learning_rate']:g}, "
              f"backbone {'trainable' if phase['train_backbone'] else 'frozen'}", flush=True)
        trainer.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + phase["epochs"],
                  initial_epoch=initial_epoch, steps_per_epoch=steps, validation_steps=val_steps,
                  callbacks=callbacks, verbose=verbose, shuffle=False)  # the dataset shuffles
        state["phases_done"].append(name)
        write_json(work_dir / STATE, {**state, "status": "running"})
        shutil.rmtree(backup_dir, ignore_errors=True)
    if not best_path.is_file():
        raise RuntimeError(f"no checkpoint was written to {best_path}: validation AUC was never finite")


def _finish(run_dir, config, records, manifest, multimodal, started):
    """Chief only: evaluate model.keras, export it and write the remaining outputs."""
    from cxr_tf.evaluation.thresholds import choose_thresholds, write_thresholds
    from cxr_tf.evaluation.plots import training_curves

    # Evaluate and export what is shipped: the best checkpoint, reloaded outside any
    # distribution strategy (so the chief does it alone).
    print(f"fit: evaluating {run_dir / MODEL} on val and test, exporting savedmodel/", flush=True)
    model = keras.models.load_model(run_dir / MODEL)
    y_val, p_val = _arrays(model, eval_dataset(records, manifest, "val", config, multimodal))
    thresholds = choose_thresholds(y_val, p_val, method=config["threshold_method"])
    write_thresholds(thresholds, run_dir / "thresholds.json")
    rows = read_history(run_dir / HISTORY)
    best = best_epoch(rows)
    result = {"model": str(run_dir / MODEL), "best_epoch": int(best["epoch"]) + 1, "best_phase": best["phase"],
              "best_val_auc_keras": best[MONITOR], "val": auc_summary(y_val, p_val)}
    if int(manifest["splits"].get("test", {}).get("num_examples", 0)) > 0:
        y_test, p_test = _arrays(model, eval_dataset(records, manifest, "test", config, multimodal))
        result["test"] = auc_summary(y_test, p_test)
    else:
        result["test"] = None
        result["note"] = f"{records} has no test split: no test metrics"
    write_json(run_dir / "metrics.json", result)
    training_curves(run_dir / HISTORY, run_dir / "training_curves.png")
    savedmodel = run_dir / "savedmodel"
    shutil.rmtree(savedmodel, ignore_errors=True)
    model.export(str(savedmodel), verbose=False)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    write_json(run_dir / STATE, {"status": "complete", "phases_done": [p["name"] for p in config["phases"]
                                                                        if p["epochs"] > 0]})
    (run_dir.parent / "latest").write_text(str(run_dir) + "\n")
    test_auc = result["test"]["macro_auc"] if result["test"] else None
    minutes, seconds = divmod(int(time.time() - started), 60)
    print(f"fit: {config['arch']} done in {minutes}m{seconds:02d}s: best epoch {result['best_epoch']} "
          f"({best['phase']}), val macro AUC {result['val']['macro_auc']:.4f}, test macro AUC "
          f"{'n/a' if test_auc is None else f'{test_auc:.4f}'}; model {run_dir / MODEL}", flush=True)
