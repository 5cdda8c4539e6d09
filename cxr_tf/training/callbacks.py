"""Training callbacks that write the run folder as epochs finish: ``history.csv`` one row per
epoch (restart-safe) and the best model saved atomically, inference-ready (no optimizer, no
loss: ``keras.models.load_model("model.keras")`` works without cxr_tf)."""

import csv
import math
from pathlib import Path

import keras
import numpy as np

MONITOR = "val_auc"
"""The default metric that chooses the best epoch (macro AUC on the validation split)."""
MONITORS = {"val_auc": "max", "val_loss": "min"}
"""The ``monitor`` values of a pipeline config and whether higher or lower is better."""


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
        if "learning_rate" not in row and getattr(self.model, "optimizer", None) is not None:
            # Keras logs the rate only when a callback before this one adds it: record the
            # rate this epoch ran at (ReduceLROnPlateau changes it after this row is written).
            row["learning_rate"] = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
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


def inference_model(model):
    """``model`` without its training state: a new, uncompiled functional model over the same
    layers and weights (nothing is copied), so saving it writes no optimizer and no
    ``compile_config`` (whose loss, ``cxr_tf.training.losses.MaskedLoss``, only loads with
    cxr_tf imported). ``model``: a functional model (every cxr_tf model is one)."""
    return keras.Model(model.input, model.output, name=model.name)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves ``inference_model(model)`` to ``x.partial.keras`` and
    renames it to ``x.keras``, so a run killed while saving keeps its previous best model
    intact, and the file loads with plain ``keras.models.load_model``. Resuming needs only its
    weights (each phase starts from them with a fresh optimizer; within a phase
    ``BackupAndRestore`` keeps the optimizer). ``model``: the model to save when ``fit`` runs
    a wrapper of it (``cxr_tf.data.augment.AugmentedModel``)."""

    def __init__(self, filepath, model=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self._saved_model = model

    def set_model(self, model):
        super().set_model(inference_model(self._saved_model or model))

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


def best_epoch(rows, monitor=MONITOR):
    """The history row best on ``monitor`` (highest AUC, lowest loss; None if there is none)."""
    scored = [r for r in rows if isinstance(r.get(monitor), float) and math.isfinite(r[monitor])]
    sign = 1.0 if MONITORS[monitor] == "max" else -1.0
    return max(scored, key=lambda r: sign * r[monitor]) if scored else None
