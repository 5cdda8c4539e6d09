"""Training: ``python -m cxr_tf.fit --arch fusion`` (library entry: ``train(config)``).

Reads ``pipelines/<arch>.yaml`` (``cxr_tf.training.config``) and, with ``init_from`` (``fit
--init-from RUN``), starts from that run's weights (``cxr_tf.training.warm_start``); trains in the config's phases
(two for the pre-trained backbones: the head with the backbone frozen at 1e-3, then
everything at 1e-5; one for the simple and multimodal CNNs; with ``weights: none``
a phase that would freeze the backbone trains it too, and says so) and writes one run
folder ``<out>/<arch>-<YYYYmmdd-HHMMSS>/`` in the layout ``cxr_tf.runs`` owns (model.keras,
savedmodel/, config.json, labels.json = the records' label set, thresholds.json,
history.csv, training_curves.png, metrics.json, state.json)
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
import importlib.util
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import runs
from cxr_tf.data import manifest
from cxr_tf.data.pipeline import make_dataset
from cxr_tf.data.sources import Sources, check_image_size
from cxr_tf.training.callbacks import MONITORS, AtomicModelCheckpoint, EpochLog, best_epoch, read_history
from cxr_tf.training.optimizers import make_optimizer
from cxr_tf.training.resume import agree_on_run_dir, is_chief
from cxr_tf.training import config as config_lib
from cxr_tf.training import distribute
from cxr_tf.training.auc import MacroAUC
from cxr_tf.training.losses import make_loss
from cxr_tf.training.warm_start import describe as describe_start, warm_start
from cxr_tf.models import ARCHITECTURES, build_model, set_backbone_trainable
from cxr_tf.models.savedmodel import export_savedmodel



# --------------------------------------------------------------------------- model
def _architecture(arch):
    """The registry's ArchSpec of ``arch``; ConfigError when a pipeline names an unregistered one."""
    if arch not in ARCHITECTURES:
        raise config_lib.ConfigError(f"arch={arch!r}: allowed values are {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def precision_policy(setting):
    """The Keras dtype policy name for the ``mixed_precision`` config value."""
    if setting is False:
        return "float32"
    if setting is True:
        return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    return setting


def _compile(model, loss, optimizer, jit_compile, num_labels):
    model.compile(
        optimizer=optimizer,
        loss=loss,
        # the macro over findings with positives, as metrics.json and the summary (cxr_tf.training.auc)
        metrics=[MacroAUC(num_labels=num_labels, name="auc")],
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
    """(y_true, y_prob) float arrays (N, K) over a deterministic evaluation dataset."""
    y_true = np.concatenate([y.numpy() for _, y in dataset], axis=0)
    y_prob = model.predict(dataset.map(lambda x, y: x), verbose=0)
    return y_true, np.clip(np.asarray(y_prob, dtype=np.float64), 0.0, 1.0)


# --------------------------------------------------------------------------- training
@dataclass
class Datasets:
    """What every phase's ``fit`` reads: the training and validation datasets and, under
    multi-worker (where both repeat), their steps per epoch (None: Keras counts them)."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps: int | None = None
    val_steps: int | None = None


@dataclass
class Progress:
    """A run's progress as its state.json records it: ``work_dir`` (the run folder, or this
    worker's own under multi-worker), ``state`` (the dict written there: ``phases_done``,
    ``augment_in_model``) and ``started`` (``time.time()`` when training began, minus the
    seconds earlier sessions trained, so ``seconds`` adds up across restarts)."""

    work_dir: Path
    state: dict
    started: float

    def save(self, status="running", **extra):
        """Write state.json: the state, ``status``, the training ``seconds`` so far and ``extra``."""
        runs.write_state(self.work_dir, {**self.state, "status": status,
                                         "seconds": round(time.time() - self.started, 1), **extra})


def _num_batches(sources, split, batch_size, training):
    n = sources.num_examples(split)
    return n // batch_size if training else math.ceil(n / batch_size)


def eval_dataset(sources, split, config, multimodal, cache=None, num_workers=1):
    """The deterministic evaluation dataset of ``split`` (``sources``: a
    ``cxr_tf.data.sources.Sources``), with its batch count known to Keras (progress bars; no
    "ran out of data" warnings). num_workers: the training processes that read it
    (``distribute.num_workers()``; it sets the auto-shard policy under multi-worker)."""
    ds = make_dataset(sources, split, config["batch_size"], image_size=config["image_size"], training=False,
                      multimodal=multimodal, cache=cache, num_workers=num_workers)
    steps = _num_batches(sources, split, config["batch_size"], training=False)
    return ds.apply(tf.data.experimental.assert_cardinality(steps))


def augment_in_model(config):
    """True when augmentation runs inside the train step (``augment_on``: "model", or
    "auto" with a GPU visible), False when in the tf.data pipeline or off."""
    if config["augment"] is False:
        return False
    if config["augment_on"] == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return config["augment_on"] == "model"


def _datasets(config, sources, multimodal, strategy, in_model):
    """The run's ``Datasets``. Multi-worker: repeated datasets with fixed step counts, so
    every worker runs the same number of steps. With the augmentation in the model, the
    training films come un-augmented at the stored size (``in_model``: the model's random
    resized crop takes them to ``image_size``). Several records folders: an epoch is as many
    films as their training splits hold together, sampled from them in the configured
    proportions."""
    cache = config["cache"] or None
    workers = distribute.num_workers()  # TF_CONFIG's, read by distribute alone
    train_ds = make_dataset(sources, "train", config["batch_size"],
                            image_size=sources.image_size if in_model else config["image_size"],
                            training=True, multimodal=multimodal, augment=False if in_model else config["augment"],
                            seed=config["seed"], shuffle_buffer=config["shuffle_buffer"], cache=cache,
                            num_workers=workers)
    steps = _num_batches(sources, "train", config["batch_size"], training=True)
    if len(sources.folders) > 1:
        train_ds = train_ds.take(steps)  # sampled from repeated folders: endless until cut to an epoch
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps))
    val_ds = eval_dataset(sources, "val", config, multimodal,
                          cache=cache if cache in (True, "memory") else None, num_workers=workers)
    if not distribute.is_multiworker(strategy):
        return Datasets(train_ds, val_ds)
    return Datasets(train_ds.repeat(), val_ds.repeat(), steps, len(val_ds))


def _check_records(config, sources):
    """ConfigError when the records cannot feed this config (before any training)."""
    for split in ("train", "val"):
        folder = sources.missing_split(split)
        if folder is not None:
            raise config_lib.ConfigError(f"{manifest.path(folder)}: split {split!r} is missing or empty; fit needs "
                                         "train and val (and test for metrics.json); rebuild the records")
    try:
        check_image_size(config["image_size"], sources.image_size, sources)
    except ValueError as err:
        raise config_lib.ConfigError(str(err)) from None
    if config["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        raise config_lib.ConfigError("tensorboard: true needs the tensorboard package (pip install tensorboard), "
                                     "which tensorflow-cpu does not bring")
    n_train = sources.num_examples("train")
    if config["batch_size"] > n_train:
        raise config_lib.ConfigError(f"batch_size={config['batch_size']} is larger than the {n_train} training "
                                     f"films in {sources}; pass --batch-size {n_train} or less")


def _resolved_config(config, sources, strategy, run_dir):
    return {
        **config,
        **sources.describe(),
        "out": str(Path(config["out"]).expanduser().resolve()),
        "split_method": sources.split_method,
        "records_image_size": sources.image_size,
        "num_examples": {s: sources.num_examples(s) for s in ("train", "val", "test")},
        "labels": list(sources.labels),
        "run_dir": str(run_dir),
        "num_replicas": int(strategy.num_replicas_in_sync),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        **({"warm_start": describe_start(config["init_from"], sources.labels)} if config["init_from"] else {}),
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
    if run_name is not None and (Path(run_name).name != str(run_name) or str(run_name) in ("", ".", "..")):
        raise ValueError(f"--run-name {run_name!r}: give a folder name (no '/', '..'); the run goes under "
                         f"--out ({config['out']})")
    # A multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = distribute.get_strategy(config["strategy"])
    # FileNotFoundError naming a folder without records, ValueError for folders that do not fit together
    sources = Sources(config["records"], config["findings"], config["records_ratio"])
    _check_records(config, sources)
    labels = sources.labels
    multimodal = _architecture(config["arch"]).multimodal
    chief = is_chief(strategy)

    signature = config_lib.resume_signature({**config, "records": str(sources)})
    out = Path(config["out"]).expanduser().resolve()
    run_dir, resumed = agree_on_run_dir(strategy, out, config["arch"], signature, run_name, resume)
    work_dir = run_dir if chief else run_dir / "workers" / distribute.task_label()
    work_dir.mkdir(parents=True, exist_ok=True)
    if chief and not resumed:
        runs.write_config(run_dir, _resolved_config(config, sources, strategy, run_dir))
        runs.write_labels(run_dir, labels)
    state = runs.read_state(work_dir, {"status": "running", "phases_done": []})
    # Where augmentation runs is decided once per run and recorded: a run started on a GPU
    # host ("auto" -> in the model) and resumed on a CPU host keeps it, so its backup fits.
    in_model = state.setdefault("augment_in_model", augment_in_model(config))
    state.pop("error", None)
    # Training time is counted across restarts: this session starts where the last one's stopped.
    progress = Progress(work_dir, state, started - float(state.pop("seconds", 0.0)))
    progress.save()
    if resumed:
        print(f"fit: resuming {run_dir} (phases done: {', '.join(state['phases_done']) or 'none'})", flush=True)

    keras.utils.set_random_seed(config["seed"])
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision_policy(config["mixed_precision"]))
    try:
        prevalence = sources.prevalence("train") if config["loss"]["name"] == "weighted_bce" else None
        loss = make_loss(config["loss"], prevalence)
        data = _datasets(config, sources, multimodal, strategy, in_model)
        with strategy.scope():
            if config["init_from"]:  # fine-tuning a run (fit's or an import): its weights, our findings
                model = warm_start(config["init_from"], labels, config["image_size"], config["dropout"])
            else:
                model = build_model(config["arch"], image_size=config["image_size"], num_labels=len(labels),
                                    head_units=config["head_units"],
                                    weights=config["weights"], dropout=config["dropout"],
                                    mc_dropout=config["mc_dropout"])
            trainer = model
            if in_model:
                from cxr_tf.data.augment import AugmentedModel, build_augmenter

                augmenter = build_augmenter(config["augment"], config["image_size"], seed=config["seed"])
                trainer = AugmentedModel(model, augmenter, name=f"{model.name}_augmented")
        where = "in the train step" if trainer is not model else "in the tf.data pipeline"
        print(f"fit: augmentation {'off' if config['augment'] is False else where}", flush=True)
        _run_phases(model, config, trainer=trainer, loss=loss, strategy=strategy, data=data, progress=progress)
    except tf.errors.OpError as err:
        _stop_on_damage(err, sources, progress)
        raise
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
    try:
        _finish(run_dir, config, sources, multimodal, progress.started)
    except tf.errors.OpError as err:
        _stop_on_damage(err, sources, progress)
        raise
    return run_dir


def _from_scratch(config, phase_name):
    """True when ``phase_name`` asks for a frozen backbone but the model starts from random
    weights (``weights: none``): a frozen random backbone is a fixed random projection and
    the head on it learns next to nothing, so the phase trains every layer from its first
    epoch instead, and a line says so."""
    phase = next(p for p in config["phases"] if p["name"] == phase_name)
    if phase["train_backbone"] or config["weights"] is not None or config["init_from"]:
        return False
    print(f"fit: weights none: phase {phase_name} trains the backbone too (a frozen random backbone "
          "learns nothing; every layer trains from the first epoch)", flush=True)
    return True


def _stop_on_damage(err, sources, progress):
    """Damaged records stop training with a RecordsError naming the shard and the first
    damaged record (TensorFlow's DataLossError names only a byte offset), and leave the
    run resumable (status "interrupted", not "running") once the shard is rebuilt."""
    from cxr_tf.data.verify import locate_damage

    found = locate_damage(sources.folders, err)
    if found is None:
        return
    progress.save("interrupted", error=str(found))
    raise found from None


def _run_phases(model, config, *, trainer, loss, strategy, data, progress):
    """Train ``trainer`` (``model``, or ``model`` behind the augmenter) on ``data``
    (``Datasets``) in the config's phases that ``progress`` (``Progress``) has not recorded
    as done, compiled with ``loss`` in ``strategy``'s scope; the best checkpoint
    (``model.keras`` in ``progress.work_dir``) holds ``model`` itself, inference-ready."""
    work_dir, state = progress.work_dir, progress.state
    best_path = work_dir / runs.MODEL
    history_path = work_dir / runs.HISTORY
    frozen = False  # models are built fully trainable; one-phase CNNs never touch their backbone
    for phase in config["phases"]:
        name = phase["name"]
        if name in state["phases_done"] or phase["epochs"] == 0:
            continue
        train_backbone = phase["train_backbone"] or _from_scratch(config, name)
        rows = read_history(history_path)
        done_before = [r for r in rows if r["phase"] != name]
        initial_epoch = int(max((r["epoch"] for r in done_before), default=-1)) + 1
        monitor, mode = config["monitor"], MONITORS[config["monitor"]]
        best = best_epoch(rows, monitor)
        with strategy.scope():
            if frozen or not train_backbone:
                set_backbone_trainable(model, train_backbone)
                frozen = not train_backbone
            if best_path.is_file():
                _load_best(model, best_path)  # each phase starts from the best weights so far
            _compile(trainer, loss, make_optimizer(config["optimizer"], phase["learning_rate"]), config["jit_compile"],
                     int(model.outputs[0].shape[-1]))
        backup_dir = work_dir / "backup" / name
        # Order matters at the end of an epoch: history row and best model are written
        # before the backup records the epoch as done, so a restart never skips them.
        callbacks = [
            EpochLog(history_path, name),
            AtomicModelCheckpoint(str(best_path), model=model, monitor=monitor, mode=mode, save_best_only=True,
                                  initial_value_threshold=best[monitor] if best else None),
            keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=config["early_stopping"]["patience"]),
            keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config["reduce_lr"]["factor"],
                                              patience=config["reduce_lr"]["patience"],
                                              min_lr=config["reduce_lr"]["min_lr"]),
            # The backup outlives fit() until the phase is recorded as done, so a kill in
            # between does not run the phase again.
            keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=config["backup_every"],
                                             delete_checkpoint=False),
            # training time so far, kept across restarts (state.json "seconds")
            keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: progress.save()),
        ]
        if config["tensorboard"] and is_chief(strategy):
            callbacks.append(keras.callbacks.TensorBoard(str(work_dir / "tensorboard" / name)))
        print(f"fit: phase {name}: {phase['epochs']} epoch(s) at learning rate {phase['learning_rate']:g}, "
              f"backbone {'trainable' if train_backbone else 'frozen'}", flush=True)
        trainer.fit(data.train, validation_data=data.val, epochs=initial_epoch + phase["epochs"],
                    initial_epoch=initial_epoch, steps_per_epoch=data.steps, validation_steps=data.val_steps,
                    callbacks=callbacks, verbose=config["verbose"], shuffle=False)  # the dataset shuffles
        state["phases_done"].append(name)
        progress.save()
        shutil.rmtree(backup_dir, ignore_errors=True)
    if not best_path.is_file():
        raise RuntimeError(f"no checkpoint was written to {best_path}: validation {config['monitor']} was never finite")


def _finish(run_dir, config, sources, multimodal, started):
    """Chief only: evaluate model.keras, export it and write the remaining outputs."""
    from cxr_tf.evaluation.metrics import auc_summary
    from cxr_tf.evaluation.plots import training_curves
    from cxr_tf.evaluation.thresholds import choose_thresholds

    # Evaluate and export what is shipped: the best checkpoint, reloaded outside any
    # distribution strategy (so the chief does it alone).
    labels = sources.labels
    print(f"fit: evaluating {run_dir / runs.MODEL} on val and test, exporting savedmodel/", flush=True)
    model = runs.load_model(run_dir)
    y_val, p_val = _arrays(model, eval_dataset(sources, "val", config, multimodal))
    thresholds = choose_thresholds(y_val, p_val, method=config["threshold_method"], labels=labels)
    runs.write_thresholds(thresholds, run_dir / runs.THRESHOLDS)
    best = best_epoch(read_history(run_dir / runs.HISTORY), config["monitor"])
    training = {"model": str(run_dir / runs.MODEL), "best_epoch": int(best["epoch"]) + 1,
                "best_phase": best["phase"], "monitor": config["monitor"],
                "best_val_auc_keras": best.get("val_auc")}
    splits = {"val": runs.split_block(auc_summary(y_val, p_val, labels), "fit"), "test": None}
    extra = {}
    if sources.missing_split("test") is None:
        y_test, p_test = _arrays(model, eval_dataset(sources, "test", config, multimodal))
        splits["test"] = runs.split_block(auc_summary(y_test, p_test, labels), "fit")
    else:
        extra["note"] = f"{sources.missing_split('test')} has no test split: no test metrics"
    runs.write_metrics(run_dir / runs.METRICS, labels, splits, training=training, **extra)
    training_curves(run_dir / runs.HISTORY, run_dir / runs.CURVES)
    savedmodel = run_dir / runs.SAVEDMODEL
    shutil.rmtree(savedmodel, ignore_errors=True)
    export_savedmodel(model, savedmodel)  # signatures serve (pixels) and serve_bytes (encoded films)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    runs.write_state(run_dir, {"status": "complete",
                               "phases_done": [p["name"] for p in config["phases"] if p["epochs"] > 0],
                               "seconds": round(time.time() - started, 1)})
    runs.mark_latest(run_dir)
    test_auc = splits["test"]["macro_auc"] if splits["test"] else None
    minutes, seconds = divmod(int(time.time() - started), 60)
    print(f"fit: {config['arch']} done in {minutes}m{seconds:02d}s: best epoch {training['best_epoch']} "
          f"({best['phase']}), val macro AUC {splits['val']['macro_auc']:.4f}, test macro AUC "
          f"{'n/a' if test_auc is None else f'{test_auc:.4f}'}; model {run_dir / runs.MODEL}", flush=True)
