"""Evaluate a trained run on one split of a records folder and write the report.

    python -m cxr_tf.evaluate --model saved_models/<run> --records records --split test --out eval/

Outputs in ``--out`` (default ``<run>/eval-<split>``): ``predictions.csv``
(image_index, patient_id, 14 probabilities ``p_<finding>``, 14 labels
``y_<finding>``), ``metrics.json``, ``thresholds.json``, PNG figures, ``report.md``
and ``report.html`` (figures embedded).

Thresholds: ``cxr_tf.evaluation.thresholds``.
"""

import csv
import json
from pathlib import Path

import numpy as np

from cxr_tf.evaluation import literature, metrics, plots, report
from cxr_tf.data.labels import LABELS
from cxr_tf.evaluation.thresholds import (DEFAULT_THRESHOLD_METHOD, FALLBACK_THRESHOLD, choose_thresholds,
                                          read_thresholds, threshold_fallbacks, write_thresholds)

# --------------------------------------------------------------------------- arrays -> outputs
def write_predictions(path, image_index, patient_id, y_prob, y_true, labels=LABELS):
    """predictions.csv: image_index, patient_id, p_<finding> x14 (6 decimals), y_<finding> x14."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_index", "patient_id", *(f"p_{n}" for n in labels), *(f"y_{n}" for n in labels)])
        for i in range(len(y_true)):
            writer.writerow([image_index[i], int(patient_id[i]), *(f"{v:.6f}" for v in y_prob[i]),
                             *(int(v) for v in y_true[i])])
    return path


def read_predictions(path, labels=LABELS):
    """(image_index list, patient_id array, y_prob (N, K), y_true (N, K)) from predictions.csv."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"image_index": str})
    return (frame["image_index"].tolist(), frame["patient_id"].to_numpy(),
            frame[[f"p_{n}" for n in labels]].to_numpy(np.float64),
            frame[[f"y_{n}" for n in labels]].to_numpy(np.int64))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value)}")


def evaluate_predictions(out, image_index, patient_id, y_true, y_prob, thresholds, threshold_info=None,
                         config=None, split="test", split_method=None, records="", run_dir="",
                         history_csv=None, n_boot=1000, seed=0, n_bins=10, model_name=None):
    """Everything after prediction, from arrays: metrics, predictions.csv, metrics.json,
    thresholds.json, figures, report.md/html in ``out``. Returns the metrics dict
    (with ``"outputs"``: {name: path}).

    thresholds must come from other films (validation) than those evaluated here."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y_true, y_prob = metrics.check_arrays(y_true, y_prob)
    summary = metrics.summarize(y_true, y_prob, patient_id, thresholds, n_boot=n_boot, seed=seed, n_bins=n_bins)
    summary.update({
        "split": split,
        "split_method": split_method,
        "split_description": literature.describe_split(split_method),
        "records": str(records),
        "run_dir": str(run_dir),
        "calibration_bins": n_bins,
        "thresholds": {**(threshold_info or {}), "values": thresholds},
    })
    outputs = {
        "predictions": write_predictions(out / "predictions.csv", image_index, patient_id, y_prob, y_true),
        "thresholds": write_thresholds(thresholds, out / "thresholds.json"),
    }
    per = summary["per_finding"]
    name = model_name or (config or {}).get("arch", "this model")
    lit = literature.load_literature()
    comparison = literature.comparison_table({n: per[n]["auc"] for n in LABELS}, summary["macro"]["auc"],
                                             f"{name} (ours)", split_method, lit)
    figures = {
        "roc": plots.roc_curves(y_true, y_prob, out / "roc_curves.png", aucs={n: per[n]["auc"] for n in LABELS}),
        "pr": plots.pr_curves(y_true, y_prob, out / "pr_curves.png",
                              aps={n: per[n]["average_precision"] for n in LABELS}),
        "auc_bars": plots.auc_bars(per, out / "auc_vs_published.png", lit, f"{name} (ours)",
                                   literature.describe_split(split_method)),
        "reliability": plots.reliability_diagram(y_true, y_prob, out / "reliability.png", n_bins=n_bins),
        "label_distribution": plots.label_distribution(
            {n: per[n]["n_positive"] for n in LABELS}, out / "label_distribution.png",
            totals={"": len(y_true)}, title=f"Findings in the {split} split ({len(y_true):,} films)"),
    }
    if history_csv and Path(history_csv).is_file():
        figures["training_curves"] = plots.training_curves(history_csv, out / "training_curves.png")
    outputs.update({f"figure_{k}": v for k, v in figures.items()})
    doc = report.evaluation_report(summary, figures, config=config, comparison=comparison)
    outputs["report_md"], outputs["report_html"] = report.write_report(doc, out)
    summary["outputs"] = {k: Path(v).name for k, v in outputs.items()}
    summary["comparison_text"] = literature.format_comparison(comparison)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps({k: v for k, v in summary.items() if k != "comparison_text"},
                                       indent=2, default=_json_default) + "\n", encoding="utf-8")
    summary["outputs"]["metrics"] = metrics_path.name
    return summary


# --------------------------------------------------------------------------- model -> arrays
def load_run(run_dir):
    """(model, config dict, labels list) of a run folder written by ``cxr_tf.training.trainer``."""
    import keras

    import cxr_tf.models.layers  # noqa: F401  registers the custom layers that load_model needs

    run_dir = Path(run_dir)
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found; --model must be a run folder written by "
                                f"cxr_tf.training.trainer (saved_models/<arch>-<timestamp>/)")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    labels_path = run_dir / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.is_file() else list(LABELS)
    if list(labels) != list(LABELS):
        raise ValueError(f"{labels_path}: the model's labels {labels} differ from cxr_tf.data.labels.LABELS")
    return keras.models.load_model(model_path, compile=False), config, labels


def _model_input(model):
    """(image_size, multimodal) from the model's inputs (named "image", optional "meta")."""
    names = [t.name.split(":")[0] for t in model.inputs]
    image = model.inputs[names.index("image")] if "image" in names else model.inputs[0]
    return int(image.shape[1]), "meta" in names


def predict_split(model, records, split, batch_size=32, image_size=None, multimodal=None):
    """Predict every film of one split (in order, no augmentation, nothing dropped).

    Returns (image_index list[str], patient_id int64 (N,), y_true int (N, 14),
    y_prob float64 (N, 14))."""
    from cxr_tf.data.pipeline import make_dataset

    size, is_multimodal = _model_input(model)
    image_size = image_size or size
    multimodal = is_multimodal if multimodal is None else multimodal
    dataset = make_dataset(records, split, batch_size, image_size=image_size, training=False,
                           multimodal=multimodal, with_ids=True)
    names, pids, ys, ps = [], [], [], []
    for x, y, ids in dataset:
        ps.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
        ys.append(np.asarray(y))
        names += [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(ids["image_index"])]
        pids.append(np.asarray(ids["patient_id"]).reshape(-1))
    if not ps:
        raise ValueError(f"{records}: split {split!r} has no films")
    y_true = np.rint(np.concatenate(ys)).astype(np.int64)
    return names, np.concatenate(pids).astype(np.int64), y_true, np.clip(np.concatenate(ps), 0.0, 1.0)


def _split_method(records, config):
    manifest = Path(records) / "manifest.json"
    if manifest.is_file():
        method = json.loads(manifest.read_text()).get("split_method")
        if method:
            return method
    return config.get("split_method")


def evaluate_run(run_dir, records=None, split="test", out=None, batch_size=32, n_boot=1000, seed=0,
                 threshold_method=DEFAULT_THRESHOLD_METHOD, rechoose_thresholds=False, n_bins=10):
    """Evaluate ``run_dir/model.keras`` on ``split`` of ``records`` (default: the
    records folder in the run's config.json) and write every output to ``out``
    (default ``run_dir/eval-<split>``). Returns the metrics dict (see
    ``evaluate_predictions``).

    Thresholds: run_dir/thresholds.json when present (and not ``rechoose_thresholds``),
    else chosen with ``threshold_method`` on the ``val`` split and saved to
    run_dir/thresholds.json if that file does not exist yet."""
    run_dir = Path(run_dir)
    model, config, _ = load_run(run_dir)
    records = records or config.get("records")
    if not records:
        raise ValueError("no records folder: pass --records (the run's config.json names none)")
    records = Path(records)
    if not (records / "manifest.json").is_file():
        raise FileNotFoundError(f"{records / 'manifest.json'} not found; --records must be a folder written "
                                f"by tools/build_tfrecords.py")
    out = Path(out) if out else run_dir / f"eval-{split}"
    saved = run_dir / "thresholds.json"
    if saved.is_file() and not rechoose_thresholds:
        thresholds = read_thresholds(saved)
        info = {"method": "saved", "source": str(saved), "fallbacks": {},
                "description": f"read from `{saved.name}` of the run (chosen on the validation split "
                               f"when the model was trained)"}
    else:
        _, _, y_val, p_val = predict_split(model, records, "val", batch_size)
        thresholds = choose_thresholds(y_val, p_val, threshold_method)
        fallbacks = threshold_fallbacks(y_val)
        label = "F1-maximising" if threshold_method == "f1" else "Youden's J"
        info = {"method": threshold_method, "source": "val", "fallbacks": fallbacks,
                "description": f"{label}, chosen per finding on the validation split ({len(y_val):,} films)"
                               + (f"; {FALLBACK_THRESHOLD} for " + ", ".join(f"{k} ({v})" for k, v in
                                                                        fallbacks.items()) if fallbacks else "")}
        if not saved.is_file():
            write_thresholds(thresholds, saved)
    names, pids, y_true, y_prob = predict_split(model, records, split, batch_size)
    return evaluate_predictions(out, names, pids, y_true, y_prob, thresholds, info, config=config,
                                split=split, split_method=_split_method(records, config), records=records,
                                run_dir=run_dir, history_csv=run_dir / "history.csv", n_boot=n_boot,
                                seed=seed, n_bins=n_bins)
