"""Portable exports of a run: SavedModel, LiteRT (float and int8) and ONNX, each with
``parity.json`` (``python -m cxr_tf.export``; docs/deployment.md).

LiteRT and ONNX exports hold the **backbone** (inputs -> the pooled ``features``
vector, nearly all of the compute) in the portable format, and the small head
(Dropout / Dense layers) as ``head.npz``, run in NumPy. So Monte-Carlo dropout works
on every backend as it does in Keras (backbone once per film, head sampled T times,
``cxr_tf.inference.uncertainty``), and a clinic PC needs only NumPy plus the LiteRT
runtime (``ai-edge-litert``) or onnxruntime. The int8 file quantizes the backbone
(full-integer kernels, float32 input/output tensors, representative data from the
run's validation records); the head stays float32. The conversions themselves:
``cxr_tf.inference.converters``.

Export folder::

    backbone.tflite | backbone.onnx | savedmodel/   the graph
    head.npz                                       head weights (litert / onnx)
    export.json    {"format", "arch", "image_size", "inputs", "labels", "head": [...]}
    parity.json    see ``parity``

An export is built in a hidden sibling folder (``.<format>.partial-*``) and renamed into place
only when complete, so a failed export leaves no half-written folder and an older export stays
until then. A missing converter or runtime raises ``cxr_tf.inference.extras.MissingExtra``.
"""

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cxr_tf import runs
from cxr_tf.data import manifest
from cxr_tf.data.jsonfile import write_json
from cxr_tf.inference.converters import to_litert, to_onnx
from cxr_tf.inference.extras import require

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "litert", "litert-int8", "onnx")
BACKENDS = ("keras", "litert", "onnx")
AUC_DROP_WARNING = 0.01
"""parity.json warns when the export's macro AUC is this much below model.keras'."""
REPRESENTATIVE_FILMS = 128
"""Validation films fed to the int8 calibration (more changes the ranges little)."""
GRAPH_FILES = {"litert": "backbone.tflite", "litert-int8": "backbone.tflite", "onnx": "backbone.onnx",
               "savedmodel": "savedmodel"}
EXTRAS = {"litert": ("ai_edge_litert",), "litert-int8": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnxruntime")}
"""Modules an export needs beyond TensorFlow (the converter, and the runtime its parity check
runs), all installed by ``pip install 'cxr_tf[export]'``."""


class ExportError(ValueError):
    """A run or export folder that cannot be used; the message names the file and the fix."""


# --------------------------------------------------------------------------- run inputs
def find_records(run_dir, config, records=None):
    """The records folder of a run (``records`` when given, else the run's config
    ``records`` resolved against the current folder and the run folder)."""
    candidates = [Path(records)] if records is not None else runs.records_candidates(run_dir, config)
    if not candidates:
        raise ExportError(f"{run_dir}/config.json names no records folder: pass --records DIR")
    for candidate in candidates:
        if manifest.exists(candidate):
            return candidate
    raise ExportError(f"no records in {', '.join(map(str, candidates))}: pass --records DIR "
                      "(the folder the run was trained on; its val split measures parity)")


def validation_arrays(records, image_size, multimodal, limit=None, batch_size=32):
    """(inputs, y_true) of the val split: inputs float32 (N, S, S, 1) pixels 0..255, or
    {"image", "meta"} for multimodal runs; y_true int (N, 14). ``limit``: first N films."""
    from cxr_tf.data.pipeline import make_dataset

    dataset = make_dataset(records, "val", batch_size, image_size=image_size, training=False,
                           multimodal=multimodal)
    xs, metas, ys = [], [], []
    for x, y in dataset:
        if multimodal:
            xs.append(np.asarray(x["image"], np.float32))
            metas.append(np.asarray(x["meta"], np.float32))
        else:
            xs.append(np.asarray(x, np.float32))
        ys.append(np.asarray(y))
        if limit and sum(len(v) for v in xs) >= limit:
            break
    if not xs:
        raise ExportError(f"{records}: the val split has no films; parity needs some")
    images, y = np.concatenate(xs)[:limit], np.rint(np.concatenate(ys)[:limit]).astype(np.int64)
    return ({"image": images, "meta": np.concatenate(metas)[:limit]} if multimodal else images), y


def _run_columns(y_records, record_labels, labels, records):
    """The records' labels (N, K_records) in the run's output order (N, K_run), -1 (missing) for a
    finding the records do not label (an imported run's, for instance): its AUC is then undefined
    and left out, as ``evaluate`` does. ExportError when they share no finding."""
    if record_labels == labels:
        return y_records
    shared = [f for f in labels if f in record_labels]
    if not shared:
        raise ExportError(f"{records}: none of its findings ({', '.join(record_labels)}) is one the run predicts "
                          f"({', '.join(labels)}): parity needs records that label some of them")
    y = np.full((len(y_records), len(labels)), -1, np.int64)
    for k, finding in enumerate(labels):
        if finding in record_labels:
            y[:, k] = y_records[:, record_labels.index(finding)]
    return y


# --------------------------------------------------------------------------- the head in NumPy
def head_spec(head):
    """(layers, arrays) describing a head ``features -> predictions`` made of Dropout and
    Dense (relu | sigmoid | linear) layers: layers = [{"type", "name", "rate"|"activation"}],
    arrays = {"<name>/kernel", "<name>/bias"}. ExportError for any other layer."""
    import keras

    layers, arrays = [], {}
    for layer in head.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Dropout):
            layers.append({"type": "dropout", "name": layer.name, "rate": float(layer.rate)})
        elif isinstance(layer, keras.layers.Dense):
            activation = keras.activations.serialize(layer.activation)
            activation = activation if isinstance(activation, str) else activation.get("config", {}).get("name")
            if activation not in ("relu", "sigmoid", "linear"):
                raise ExportError(f"head layer {layer.name}: activation {activation!r} is not supported in head.npz")
            kernel, bias = layer.get_weights()
            arrays[f"{layer.name}/kernel"], arrays[f"{layer.name}/bias"] = kernel.astype(np.float32), bias.astype(np.float32)
            layers.append({"type": "dense", "name": layer.name, "activation": activation})
        else:
            raise ExportError(f"head layer {layer.name} ({type(layer).__name__}) is not Dropout or Dense: "
                              "this head cannot run outside Keras")
    return layers, arrays


class NumpyHead:
    """The head ``features (N, D) -> probabilities (N, 14)`` in NumPy, with optional
    always-on dropout (inverted: kept units scaled by 1 / (1 - rate), as Keras does)."""

    def __init__(self, layers, arrays):
        self.layers, self.arrays = layers, arrays

    def __call__(self, features, rng=None):
        x = np.asarray(features, np.float32)
        for layer in self.layers:
            if layer["type"] == "dropout":
                if rng is not None and layer["rate"] > 0:
                    keep = rng.random(x.shape) >= layer["rate"]
                    x = np.where(keep, x / (1.0 - layer["rate"]), 0.0).astype(np.float32)
                continue
            x = x @ self.arrays[f"{layer['name']}/kernel"] + self.arrays[f"{layer['name']}/bias"]
            if layer["activation"] == "relu":
                x = np.maximum(x, 0.0)
            elif layer["activation"] == "sigmoid":
                x = 1.0 / (1.0 + np.exp(-x))
        return x


# --------------------------------------------------------------------------- loading an export
class PortableModel:
    """An export folder (litert, litert-int8 or onnx) loaded for inference, with the
    ``cxr_tf.inference.uncertainty.MCSampler`` interface:
    ``model(images, samples, meta) -> (mean, std)`` and ``model.deterministic(images, meta)``,
    float32 (N, 14); images float32 (N, S, S, 1) pixels 0..255."""

    def __init__(self, folder, threads=None, seed=None):
        self.folder = Path(folder)
        info_path = self.folder / "export.json"
        if not info_path.is_file():
            raise ExportError(f"{info_path} not found: export the run first with "
                              "`python -m cxr_tf.export --model RUN --format litert-int8`")
        self.info = json.loads(info_path.read_text())
        self.format = self.info["format"]
        if self.format not in ("litert", "litert-int8", "onnx"):
            raise ExportError(f"{info_path}: format {self.format!r} has no portable runtime; "
                              "use --backend keras for a SavedModel")
        self.inputs = list(self.info["inputs"])
        self.multimodal = "meta" in self.inputs
        self.image_size = int(self.info["image_size"])
        with np.load(self.folder / "head.npz") as arrays:
            self.head = NumpyHead(self.info["head"], {k: arrays[k] for k in arrays.files})
        self.rng = np.random.default_rng(seed)
        threads = threads or os.cpu_count() or 1
        graph = self.folder / GRAPH_FILES[self.format]
        if self.format == "onnx":
            ort = require("onnxruntime", "onnx", "The ONNX backend")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            self._onnx_inputs = [i.name for i in self._session.get_inputs()]
        else:
            require("ai_edge_litert", "litert", "The LiteRT backend")
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(graph), num_threads=threads)
            self._runner = self._interpreter.get_signature_runner()
        self.backbone_calls = 0

    def _feed(self, images, meta):
        feed = {"image": np.asarray(images, np.float32).reshape(len(images), self.image_size, self.image_size, 1)}
        if self.multimodal:
            if meta is None:
                raise ValueError(f"the export {self.folder} has inputs {self.inputs}: pass meta (N, 5)")
            feed["meta"] = np.asarray(meta, np.float32).reshape(len(images), -1)
        return feed

    def features(self, images, meta=None):
        """The pooled features (N, D) float32 of a batch: one backbone pass."""
        feed = self._feed(images, meta)
        self.backbone_calls += len(feed["image"])
        if self.format == "onnx":
            by_position = dict(zip(self.inputs, self._onnx_inputs))
            return self._session.run(None, {by_position[k]: v for k, v in feed.items()})[0]
        return self._runner(**feed)["features"]

    def deterministic(self, images, meta=None):
        return self.head(self.features(images, meta))

    def __call__(self, images, samples=25, meta=None, seeds=None):
        """(mean, std) float32 (N, K) over ``samples`` head draws. seeds: one integer per
        film for repeatable draws (the film's masks depend on its seed only), as
        ``MCSampler``; the draws are NumPy's, so they differ from Keras' for one seed."""
        if samples < 1:
            raise ValueError(f"samples={samples}: need at least 1 Monte-Carlo pass")
        features = self.features(images, meta)
        if seeds is not None and len(seeds) != len(features):
            raise ValueError(f"{len(seeds)} seeds for {len(features)} films: give one seed per film")
        if seeds is None:
            draws = np.stack([self.head(features, rng=self.rng) for _ in range(samples)])  # (T, N, K)
        else:
            draws = np.concatenate([self._film_draws(f[None], seed, samples) for f, seed in zip(features, seeds)],
                                   axis=1) if len(features) else np.zeros((samples, 0, len(self.info["labels"])))
        return draws.mean(axis=0).astype(np.float32), draws.std(axis=0).astype(np.float32)

    def _film_draws(self, features, seed, samples):
        """(T, 1, K) head draws of one film's features (1, D) with its own generator."""
        rng = np.random.default_rng(int(seed) % (1 << 64))
        return np.stack([self.head(features, rng=rng) for _ in range(samples)])


def export_dir(run_dir, fmt):
    """Default folder of an export: ``RUN/export/<format>``."""
    return Path(run_dir) / "export" / fmt


def find_export(run_dir, backend):
    """The export folder a ``--backend`` uses: litert -> ``export/litert-int8`` when present, else
    ``export/litert``; onnx -> ``export/onnx``. ExportError with the command to run otherwise."""
    names = {"litert": ("litert-int8", "litert"), "onnx": ("onnx",)}[backend]
    for name in names:
        if (export_dir(run_dir, name) / "export.json").is_file():
            return export_dir(run_dir, name)
    raise ExportError(f"{run_dir}: no {' or '.join(f'export/{n}' for n in names)}: run "
                      f"`python -m cxr_tf.export --model {run_dir} --format {names[0]}` first")


# --------------------------------------------------------------------------- parity
def folder_bytes(path):
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ms_per_film(predict, one, repeats=20):
    """Median CPU wall ms of ``predict(one)`` on one film (after one warm-up call)."""
    predict(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(one)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def parity(reference, candidate, y_true, one_reference, one_candidate, labels):
    """The parity report of an export against model.keras on the same films.

    reference, candidate: probabilities (N, 14); one_*: zero-argument callables
    predicting one film (timed); labels: the run's findings in output order. Returns {"films", "max_abs_diff", "auc": {"keras",
    "export"} per finding, "macro_auc": {"keras", "export", "delta"}, "ms_per_film":
    {"keras", "export"}, "warning"}."""
    from cxr_tf.evaluation.metrics import auc_summary

    ref, exp = auc_summary(y_true, reference, labels), auc_summary(y_true, candidate, labels)
    auc_ref, auc_exp, macro_ref, macro_exp = ref["auc"], exp["auc"], ref["macro_auc"], exp["macro_auc"]
    delta = None if macro_ref is None or macro_exp is None else macro_exp - macro_ref
    warning = None
    if delta is not None and delta < -AUC_DROP_WARNING:
        warning = (f"macro AUC drops by {-delta:.4f} (> {AUC_DROP_WARNING}) against model.keras: "
                   "this export costs accuracy; prefer the float export")
    return {
        "films": int(len(y_true)),
        "max_abs_diff": float(np.max(np.abs(np.asarray(reference) - np.asarray(candidate)))),
        "auc": {"keras": auc_ref, "export": auc_exp},
        "macro_auc": {"keras": macro_ref, "export": macro_exp, "delta": delta},
        "ms_per_film": {"keras": ms_per_film(lambda _: one_reference(), None),
                        "export": ms_per_film(lambda _: one_candidate(), None)},
        "warning": warning,
    }


# --------------------------------------------------------------------------- the export
def _check_replaceable(out):
    """ExportError unless ``out`` is absent, an empty folder or an export (its export.json)."""
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "export.json").is_file())):
        raise ExportError(f"{out} exists and is not an export folder (no export.json): an export replaces "
                          "its whole folder, so choose another --out")


@contextlib.contextmanager
def _staged(out):
    """A new hidden folder beside ``out`` to build an export in: renamed to ``out`` when the block
    completes (replacing an export there only then), removed when it raises."""
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def export_run(run_dir, fmt, out=None, records=None):
    """Export run ``run_dir`` as ``fmt`` (one of ``FORMATS``) into ``out`` (default
    ``RUN/export/<fmt>``) with ``parity.json``. Returns the parity dict (plus "folder",
    "size_bytes", "format"). ExportError for an unusable run or ``out``; MissingExtra
    (``cxr_tf.inference.extras``) when the format's converter or runtime is not installed."""
    import tensorflow as tf

    from cxr_tf.inference.uncertainty import split_model
    from cxr_tf.models.savedmodel import export_savedmodel

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    for module in EXTRAS.get(fmt, ()):  # before the minutes of loading and converting
        require(module, "export", f"{'ONNX' if fmt == 'onnx' else 'LiteRT'} export")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else export_dir(run_dir, fmt)
    _check_replaceable(out)
    run = runs.Run(run_dir)
    model, config, labels = run.model, run.config, list(run.labels)
    from cxr_tf.models import model_input_spec  # Keras: not on a clinic PC that only runs exports

    image_size, multimodal = model_input_spec(model)
    records_dir = find_records(run_dir, config, records)
    x, y_records = validation_arrays(records_dir, image_size, multimodal)
    y_true = _run_columns(y_records, list(manifest.read(records_dir).labels), labels, records_dir)
    images, meta = (x["image"], x["meta"]) if multimodal else (x, None)
    reference = np.asarray(model.predict(x, batch_size=32, verbose=0), np.float32)
    one_x = {"image": images[:1], "meta": meta[:1]} if multimodal else images[:1]
    keras_one = tf.function(lambda v: model(v, training=False))

    with _staged(out) as folder:
        if fmt == "savedmodel":
            export_savedmodel(model, folder / "savedmodel")
            inputs = ["image", "meta"] if multimodal else ["image"]
            described = {"signatures": ["serve", "serve_bytes"]}
        else:
            backbone, head = split_model(model)
            layers, arrays = head_spec(head)
            graph = folder / GRAPH_FILES[fmt]
            if fmt == "onnx":
                inputs = to_onnx(backbone, graph)
            else:
                n = REPRESENTATIVE_FILMS
                representative = None if fmt == "litert" else (
                    {"image": images[:n], "meta": meta[:n]} if multimodal else images[:n])
                inputs = to_litert(backbone, graph, representative)
            np.savez(folder / "head.npz", **arrays)
            described = {"head": layers}
        write_json(folder / "export.json", {"format": fmt, "arch": config.get("arch"), "image_size": image_size,
                                            "inputs": inputs, "labels": labels, **described})
        if fmt == "savedmodel":
            loaded = tf.saved_model.load(str(folder / "savedmodel"))
            predict = (lambda i, m: loaded.serve(i, m)) if multimodal else (lambda i, m: loaded.serve(i))
        else:
            predict = PortableModel(folder).deterministic
        candidate = np.concatenate([np.asarray(predict(images[s:s + 32], None if meta is None else meta[s:s + 32]))
                                    for s in range(0, len(images), 32)])
        report = parity(reference, candidate, y_true, lambda: keras_one(one_x),
                        lambda: predict(images[:1], None if meta is None else meta[:1]), labels)
        report.update({"format": fmt, "folder": str(out), "size_bytes": folder_bytes(folder / GRAPH_FILES[fmt])
                       + (folder_bytes(folder / "head.npz") if (folder / "head.npz").is_file() else 0),
                       "keras_size_bytes": folder_bytes(run_dir / "model.keras")})
        write_json(folder / "parity.json", report)
    if report["warning"]:
        log.warning("%s: %s", out, report["warning"])
    return report
