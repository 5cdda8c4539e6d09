"""The run folder: the one module that lays out, writes and reads what ``cxr_tf.fit`` leaves.

``<out>/<arch>-<YYYYmmdd-HHMMSS>/``:

=================== ==========================================================================
model.keras         best weights (validation macro AUC) over all phases; inference-ready (no
                    optimizer or loss: ``keras.models.load_model`` reads it without cxr_tf)
savedmodel/         ``model.export``: inference SavedModel (endpoint ``serve``)
config.json         the resolved config + ``split_method``, data counts, versions
labels.json         the run's label set, in output order (the records' manifest labels)
thresholds.json     {finding: threshold} chosen on validation
history.csv         one row per epoch: phase, epoch, loss, auc, val_*, learning_rate
training_curves.png loss and AUC, train vs validation
metrics.json        ``{"format_version", "labels", "training", "val", "test"}`` (see below)
state.json          progress (``running`` / ``complete``), for restarts
=================== ==========================================================================

``<out>/latest`` holds the path of the newest complete run.

**metrics.json, one schema.** Per split a block ``{"num_examples", "auc": {finding: float |
null}, "macro_auc", "excluded": {finding: reason}, "source"}``: ``fit`` writes ``val`` and
``test`` (``source: "fit"``); ``cxr_tf.evaluate`` replaces the block of the split it evaluated
with the same keys plus confidence intervals (``source: "evaluate"``), and writes the same
schema, with every detail, into its own output folder. A finding without positives (or
negatives) has AUC ``null`` and is left out of the macro mean everywhere. Files written before
``format_version`` existed read the same (their ``val``/``test`` blocks have these keys).
"""

from pathlib import Path

from cxr_tf.data.jsonfile import read_json, write_json
from cxr_tf.data.labels import LABELS

MODEL = "model.keras"
SAVEDMODEL = "savedmodel"
CONFIG = "config.json"
LABELS_FILE = "labels.json"
THRESHOLDS = "thresholds.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
STATE = "state.json"
CURVES = "training_curves.png"
LATEST = "latest"
METRICS_VERSION = 2
DEFAULT_RUNS_DIR = Path("saved_models")


# --------------------------------------------------------------------------- finding a run
def resolve_run_dir(model=None):
    """The run folder: ``model`` when given (a run folder, a ``latest`` file: the run it names,
    or a path inside a run: its ``model.keras``, ``export/onnx``, ...), else the path that
    ``saved_models/latest`` names (looked up in the current folder). Checks it holds
    ``model.keras``; FileNotFoundError with the fix otherwise. Every command that reads a run
    finds it here."""
    if model is None:
        latest = Path.cwd() / DEFAULT_RUNS_DIR / LATEST
        if not latest.is_file():
            raise FileNotFoundError("no --model RUN_DIR given and no saved_models/latest in the current folder: "
                                    "train one with `python -m cxr_tf.fit` or pass --model saved_models/<run>")
    else:
        latest = Path(model)
    if latest.is_file() and latest.name == LATEST:
        named = Path(latest.read_text().strip())
        options = [named] if named.is_absolute() else [Path.cwd() / named, latest.parent / named]
        run_dir = next((o for o in options if (o / MODEL).is_file()), options[0])
    else:
        run_dir = Path(model)
        # a path inside a run: the nearest folder above it that holds model.keras
        run_dir = next((p for p in (run_dir, *run_dir.parents) if (p / MODEL).is_file()), run_dir)
    if not (run_dir / MODEL).is_file():
        raise FileNotFoundError(f"{run_dir}/{MODEL} not found: RUN_DIR must be a folder written by "
                                "`python -m cxr_tf.fit` (model.keras, config.json, labels.json, thresholds.json)")
    return run_dir


def records_candidates(run_dir, config):
    """Where the records folder named in a run's config may be (several folders, comma-separated:
    each in turn): that path when absolute, else that path under the current folder, the run
    folder and the two folders above it."""
    run_dir, places = Path(run_dir), []
    for named in (n.strip() for n in str(config.get("records") or "").split(",")):
        if named:
            named = Path(named)
            places += [named] if named.is_absolute() else [Path.cwd() / named, run_dir / named,
                                                           run_dir.parent / named, run_dir.parents[1] / named]
    return places


def trained_age_stats(config):
    """(age mean, age std) that a run's metadata input was trained with (its config.json
    ``metadata``, which fit writes), or None for a run that does not record them."""
    meta = config.get("metadata") or {}
    return (float(meta["age_mean"]), float(meta["age_std"])) if meta.get("age_std") else None


def mark_latest(run_dir):
    """Point ``<run_dir>/../latest`` at ``run_dir``."""
    run_dir = Path(run_dir)
    (run_dir.parent / LATEST).write_text(str(run_dir) + "\n")


# --------------------------------------------------------------------------- files
def read_config(run_dir):
    """config.json as a dict ({} when absent)."""
    return read_json(Path(run_dir) / CONFIG, {})


def write_config(run_dir, config):
    return write_json(Path(run_dir) / CONFIG, config)


def read_labels(run_dir):
    """The run's label set (tuple of names, output order). A run without labels.json (older
    runs) has NIH's 14. ValueError naming the file when it is not a list of unique names."""
    path = Path(run_dir) / LABELS_FILE
    labels = read_json(path, list(LABELS))
    if (not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)):
        raise ValueError(f"{path}: expected a JSON list of unique finding names, got {labels!r}")
    return tuple(labels)


def write_labels(run_dir, labels):
    return write_json(Path(run_dir) / LABELS_FILE, list(labels))


def read_thresholds(path, labels):
    """{finding: float} from a thresholds.json, for every name in ``labels``; ValueError naming
    the file and the missing findings."""
    path = Path(path)
    values = read_json(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object {{finding: threshold}}")
    missing = [name for name in labels if name not in values]
    if missing:
        raise ValueError(f"{path}: no threshold for {missing}; delete the file to choose them again "
                         "on the validation split")
    return {name: float(values[name]) for name in labels}


def write_thresholds(thresholds, path):
    return write_json(path, {k: float(v) for k, v in thresholds.items()})


def read_state(run_dir, default=None):
    return read_json(Path(run_dir) / STATE, default)


def write_state(run_dir, state):
    return write_json(Path(run_dir) / STATE, state)


# --------------------------------------------------------------------------- metrics.json
def split_block(summary, source):
    """The metrics.json block of one split from ``cxr_tf.evaluation.metrics.auc_summary`` or
    ``summarize`` output (the latter adds confidence intervals)."""
    if "per_finding" in summary:  # a full evaluation summary
        per = summary["per_finding"]
        return {"num_examples": summary["num_examples"], "auc": {n: per[n]["auc"] for n in summary["labels"]},
                "macro_auc": summary["macro"]["auc"], "excluded": summary["macro"]["excluded"],
                "auc_ci": {n: per[n]["auc_ci"] for n in summary["labels"]},
                "macro_auc_ci": summary["macro"]["auc_ci"], "source": source}
    return {**summary, "source": source}


def read_metrics(run_dir_or_file):
    """metrics.json (of a run folder, or the file itself) in the current schema; {} when absent.
    Older files keep their ``val``/``test`` blocks; their training keys move under ``training``."""
    path = Path(run_dir_or_file)
    path = path / METRICS if path.is_dir() else path
    data = read_json(path, {})
    if data and "format_version" not in data:
        training = {k: data.pop(k) for k in ("model", "best_epoch", "best_phase", "best_val_auc_keras") if k in data}
        data = {"format_version": 1, "training": training, **data}
    return data


def write_metrics(path, labels, splits, training=None, **extra):
    """Write metrics.json: ``splits`` {split: block} (``split_block``)."""
    body = {"format_version": METRICS_VERSION, "labels": list(labels)}
    if training is not None:
        body["training"] = training
    return write_json(path, {**body, **splits, **extra})


def record_evaluation(run_dir, split, block):
    """Replace (or add) the block of ``split`` in the run's metrics.json."""
    run_dir = Path(run_dir)
    data = read_metrics(run_dir)
    labels = data.get("labels") or list(read_labels(run_dir))
    splits = {k: v for k, v in data.items() if k not in ("format_version", "labels", "training")}
    splits[split] = block
    return write_metrics(run_dir / METRICS, labels, splits, training=data.get("training"))


# --------------------------------------------------------------------------- the model
def load_model(run_dir):
    """The run's Keras model (``model.keras``). Its image size and whether it is multimodal:
    ``cxr_tf.models.model_input_spec(model)``.

    model.keras holds no training state, so plain ``keras.models.load_model`` reads it
    (docs/models.md); ``compile=False`` and the import of ``cxr_tf.models`` (which registers
    ``MCDropout`` and ``BackbonePreprocess``) are for files written by older versions, which
    carried the compiled loss and those custom layers."""
    import keras

    import cxr_tf.models  # noqa: F401  registers the custom layers of older model.keras files

    return keras.models.load_model(Path(run_dir) / MODEL, compile=False)


class Run:
    """A trained run, read once: ``path``, ``config``, ``labels``, ``thresholds`` (+
    ``thresholds_source``: ``"thresholds.json"`` or ``"default"``), ``metrics`` and, on first
    use, ``model``. A missing thresholds.json gives ``default_threshold`` for every finding
    and a note in ``notes``."""

    def __init__(self, run_dir=None, default_threshold=0.5):
        self.path = resolve_run_dir(run_dir)
        self.notes = []
        if not (self.path / CONFIG).is_file():
            raise FileNotFoundError(f"{self.path / CONFIG} not found: the run folder is incomplete")
        self.config = read_config(self.path)
        self.labels = read_labels(self.path)
        self.metrics = read_metrics(self.path)
        path = self.path / THRESHOLDS
        if path.is_file():
            self.thresholds, self.thresholds_source = read_thresholds(path, self.labels), THRESHOLDS
        else:
            self.thresholds = {f: float(default_threshold) for f in self.labels}
            self.thresholds_source = "default"
            self.notes.append(f"{path} not found: using {default_threshold} for every finding (not "
                              "validation-chosen; run `python -m cxr_tf.evaluate` on this run)")
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.path)
            outputs = int(self._model.outputs[0].shape[-1])
            if outputs != len(self.labels):
                raise ValueError(f"{self.path / MODEL} has {outputs} outputs but {self.path / LABELS_FILE} "
                                 f"names {len(self.labels)} findings: the run folder is inconsistent")
        return self._model

    @property
    def arch(self):
        return self.config.get("arch")

    def __repr__(self):
        return f"Run({str(self.path)!r}, arch={self.arch!r}, labels={len(self.labels)})"

