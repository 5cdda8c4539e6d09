"""Evaluate a trained run on one split of a records folder and write the report.

    python -m cxr_tf.evaluate --model saved_models/<run> --records records --split test --out eval/

Outputs in ``--out`` (default ``<run>/eval-<split>``): ``predictions.csv``
(image_index, patient_id, 14 probabilities ``p_<finding>``, 14 labels
``y_<finding>``: 1, 0 or -1 for a missing label, ``cxr_tf.data.datasets.base.MISSING``),
``metrics.json``, ``thresholds.json``, PNG figures, ``report.md`` and ``report.html``
(figures embedded).

Thresholds: ``cxr_tf.evaluation.thresholds``.
"""

import csv
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_tf.evaluation import literature, metrics, plots, report
from cxr_tf import runs
from cxr_tf.data.labels import LABELS
from cxr_tf.data.sources import Sources, records_list
from cxr_tf.evaluation.thresholds import (DEFAULT_THRESHOLD_METHOD, FALLBACK_THRESHOLD, choose_thresholds,
                                          threshold_fallbacks)

# --------------------------------------------------------------------------- arrays -> outputs
def write_predictions(path, image_index, patient_id, y_prob, y_true, labels=LABELS):
    """predictions.csv: image_index, patient_id, p_<finding> (float32 exactly, 9 significant digits),
    y_<finding> (1, 0 or -1: missing) x14."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_index", "patient_id", *(f"p_{n}" for n in labels), *(f"y_{n}" for n in labels)])
        for i in range(len(y_true)):
            writer.writerow([image_index[i], int(patient_id[i]), *(f"{v:.9g}" for v in y_prob[i]),
                             *(int(v) for v in y_true[i])])
    return path


def read_predictions(path, labels=LABELS):
    """(image_index list, patient_id array, y_prob (N, K), y_true (N, K), -1 where missing)
    from predictions.csv."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"image_index": str})
    return (frame["image_index"].tolist(), frame["patient_id"].to_numpy(),
            frame[[f"p_{n}" for n in labels]].to_numpy(np.float64),
            frame[[f"y_{n}" for n in labels]].to_numpy(np.int64))


def evaluate_predictions(out, image_index, patient_id, y_true, y_prob, thresholds, threshold_info=None,
                         config=None, split="test", split_method=None, records="", run_dir="",
                         history_csv=None, n_boot=1000, seed=0, n_bins=10, model_name=None, labels=LABELS,
                         external=None, caveats=()):
    """Everything after prediction, from arrays: metrics, predictions.csv, metrics.json,
    thresholds.json, figures, report.md/html in ``out``. Returns the metrics dict
    (with ``"outputs"``: {name: path}).

    thresholds must come from other films (validation) than those evaluated here.
    external: for an external validation, {"dataset", "internal_records", "shared",
    "left_out": {finding: reason}, "internal_auc": {finding: the run's own test AUC}}; the
    report then has a section that says so and puts internal and external AUCs side by side
    (and leaves out the published NIH results, which are of another population). caveats: sentences
    the report and metrics.json repeat (the overlap caveat of imported weights)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    y_true, y_prob = metrics.check_arrays(y_true, y_prob, labels)
    summary = metrics.summarize(y_true, y_prob, patient_id, thresholds, n_boot=n_boot, seed=seed, n_bins=n_bins,
                                labels=labels)
    summary.update({
        "external": external,
        "caveats": list(caveats),
        "split": split,
        "split_method": split_method,
        "split_description": literature.describe_split(split_method),
        "records": str(records),
        "run_dir": str(run_dir),
        "calibration_bins": n_bins,
        "thresholds": {**(threshold_info or {}), "values": thresholds},
    })
    outputs = {
        "predictions": write_predictions(out / "predictions.csv", image_index, patient_id, y_prob, y_true, labels),
        "thresholds": runs.write_thresholds(thresholds, out / runs.THRESHOLDS),
    }
    per = summary["per_finding"]
    name = model_name or (config or {}).get("arch", "this model")
    lit = literature.load_literature()
    comparison = None if external else literature.comparison_table(
        {n: per[n]["auc"] for n in labels}, summary["macro"]["auc"], f"{name} (ours)", split_method, lit)
    n_known = {n: per[n]["n_known"] for n in labels}
    partly_labelled = any(v < len(y_true) for v in n_known.values())
    figures = {
        "roc": plots.roc_curves(y_true, y_prob, out / "roc_curves.png", labels,
                                aucs={n: per[n]["auc"] for n in labels}),
        "pr": plots.pr_curves(y_true, y_prob, out / "pr_curves.png", labels,
                              aps={n: per[n]["average_precision"] for n in labels}),
        "auc_bars": plots.auc_bars(per, out / "auc_vs_published.png", None if external else lit, f"{name} (ours)",
                                   literature.describe_split(split_method), labels=labels),
        "reliability": plots.reliability_diagram(y_true, y_prob, out / "reliability.png", labels, n_bins=n_bins),
        "label_distribution": plots.label_distribution(
            {n: per[n]["n_positive"] for n in labels}, out / "label_distribution.png",
            totals={"": n_known if partly_labelled else len(y_true)},
            title=f"Findings in the {split} split ({len(y_true):,} films"
                  + ("; not every finding labelled on every film)" if partly_labelled else ")")),
    }
    if history_csv and Path(history_csv).is_file():
        figures["training_curves"] = plots.training_curves(history_csv, out / "training_curves.png")
    outputs.update({f"figure_{k}": v for k, v in figures.items()})
    doc = report.evaluation_report(summary, figures, config=config, comparison=comparison)
    outputs["report_md"], outputs["report_html"] = report.write_report(doc, out)
    summary["outputs"] = {k: Path(v).name for k, v in outputs.items()}
    summary["comparison_text"] = (literature.format_comparison(comparison) if comparison is not None else
                                  "external validation: the published NIH results are of another population; "
                                  "report.md puts the run's internal test AUCs beside these")
    # The same schema as the run's metrics.json (cxr_tf.runs), this split's block with every detail.
    detail = {k: v for k, v in summary.items() if k != "comparison_text"}
    metrics_path = runs.write_metrics(out / runs.METRICS, labels, {split: {**runs.split_block(summary, "evaluate"),
                                                                          **detail}})
    summary["outputs"]["metrics"] = metrics_path.name
    return summary


# --------------------------------------------------------------------------- model -> arrays
def predict_split(model, records, split, batch_size=32, image_size=None, multimodal=None, labels=None,
                  age_stats=None):
    """Predict every film of one split (in order, no augmentation, nothing dropped).

    records: a records folder or a list of them (read one after the other); labels: the
    label set of ``y_true`` (common names, each labelled by the records), default the
    records' own; age_stats: (mean, std) standardising the metadata input's age
    (``make_dataset``; a run's: ``runs.trained_age_stats``). Returns (image_index list[str],
    patient_id int64 (N,), y_true int (N, K), 1 / 0 / -1 missing, y_prob float64 (N, K))."""
    from cxr_tf.data.pipeline import make_dataset
    from cxr_tf.data.verify import locate_damage
    from cxr_tf.models import model_input_spec

    size, is_multimodal = model_input_spec(model)
    image_size = image_size or size
    multimodal = is_multimodal if multimodal is None else multimodal
    sources = Sources(records, findings=labels)
    dataset = make_dataset(sources, split, batch_size, image_size=image_size, training=False,
                           multimodal=multimodal, with_ids=True, age_stats=age_stats)
    names, pids, ys, ps = [], [], [], []
    try:
        for x, y, ids in dataset:
            ps.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
            ys.append(np.asarray(y))
            names += [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(ids["image_index"])]
            pids.append(np.asarray(ids["patient_id"]).reshape(-1))
    except tf.errors.OpError as err:  # damaged records: name the shard and record (TF names a byte offset)
        found = locate_damage(sources.folders, err, [split])
        if found is None:
            raise
        raise found from None
    if not ps:
        raise ValueError(f"{sources}: split {split!r} has no films")
    y_true = np.rint(np.concatenate(ys)).astype(np.int64)
    return names, np.concatenate(pids).astype(np.int64), y_true, np.clip(np.concatenate(ps), 0.0, 1.0)


def compare_findings(run, sources):
    """(shared, left_out) between a run and the records it is evaluated on: the run's findings
    that the records label (common names, run order), and {finding: why it is left out} for
    the others of either side."""
    datasets = ", ".join(sorted(set(sources.datasets)))
    labelled = set(sources.labels)
    shared = [f for f in run.labels if f in labelled]
    left_out = {f: f"not labelled in these records ({datasets})" for f in run.labels if f not in labelled}
    left_out.update({f: "labelled in these records, but the model was not trained on it"
                     for f in sources.labels if f not in run.labels})
    return shared, left_out


def evaluate_run(run_dir, records=None, split="test", out=None, batch_size=32, n_boot=1000, seed=0,
                 threshold_method=DEFAULT_THRESHOLD_METHOD, rechoose_thresholds=False, n_bins=10):
    """Evaluate ``run_dir/model.keras`` on ``split`` of ``records`` (default: the records in
    the run's config.json) and write every output to ``out`` (default ``run_dir/eval-<split>``,
    ``run_dir/eval-<dataset>-<split>`` for other records). Returns the metrics dict (see
    ``evaluate_predictions``).

    The run's own records: the run's metrics.json gets this split's block. Other records
    (external validation: another dataset, or another build): the findings both share
    (``cxr_tf.data.harmonise`` common names) are evaluated, the others are listed with the
    reason, and the report puts the run's internal test AUCs beside the external ones; the
    run's metrics.json is left as it is (its test block stays the internal evidence).

    Thresholds: run_dir/thresholds.json when present (and not ``rechoose_thresholds``),
    else chosen with ``threshold_method`` on the ``val`` split and saved to
    run_dir/thresholds.json if that file does not exist yet (own records only)."""
    run = runs.Run(run_dir)
    own = run.config.get("records")
    records = records or own
    if not records:
        raise ValueError("no records folder: pass --records (the run's config.json names none)")
    sources = Sources(records)  # FileNotFoundError naming a folder without records
    for folder, records_manifest in zip(sources.folders, sources.manifests):
        if split not in records_manifest.splits:
            raise ValueError(f"--split {split!r}: {folder} has the splits {', '.join(sorted(records_manifest.splits))}")
    shared, left_out = compare_findings(run, sources)
    if not shared:
        raise ValueError(f"{sources}: none of its findings ({', '.join(sources.labels)}) is one the run was trained "
                         f"on ({', '.join(run.labels)}; {run.path / runs.LABELS_FILE}): nothing to evaluate")
    internal = bool(own) and records_list(records) == records_list(own)
    dataset = "+".join(sources.datasets)
    out = Path(out) if out else run.path / (f"eval-{split}" if internal else f"eval-{dataset}-{split}")
    columns = [run.labels.index(f) for f in shared]

    def predicted(which):
        # the age standardisation the run was trained with, not that of the records it is evaluated on
        names, pids, y_true, y_prob = predict_split(run.model, sources.folders, which, batch_size, labels=shared,
                                                    age_stats=runs.trained_age_stats(run.config))
        return names, pids, y_true, y_prob[:, columns]

    saved = run.path / runs.THRESHOLDS
    if saved.is_file() and not rechoose_thresholds:
        thresholds = {f: run.thresholds[f] for f in shared}
        info = {"method": "saved", "source": str(saved), "fallbacks": {},
                "description": f"read from `{saved.name}` of the run (chosen on the validation split "
                               f"when the model was trained)"}
    else:
        _, _, y_val, p_val = predicted("val")
        thresholds = choose_thresholds(y_val, p_val, threshold_method, labels=shared)
        fallbacks = threshold_fallbacks(y_val, labels=shared)
        label = "F1-maximising" if threshold_method == "f1" else "Youden's J"
        info = {"method": threshold_method, "source": "val", "fallbacks": fallbacks,
                "description": f"{label}, chosen per finding on the validation split ({len(y_val):,} films)"
                               + (f"; {FALLBACK_THRESHOLD} for " + ", ".join(f"{k} ({v})" for k, v in
                                                                        fallbacks.items()) if fallbacks else "")}
        if not saved.is_file() and internal and shared == list(run.labels):
            runs.write_thresholds(thresholds, saved)
    names, pids, y_true, y_prob = predicted(split)
    external = None
    if not internal or left_out:
        internal_test = (runs.read_metrics(run.path).get("test") or {}).get("auc") or {}
        external = {"dataset": dataset, "internal_records": own, "shared": shared, "left_out": left_out,
                    "internal_auc": {f: internal_test.get(f) for f in shared}}
    caveats = [literature.overlap_caveat(run.config["imported"], sources.datasets)] if run.config.get("imported") else []
    summary = evaluate_predictions(out, names, pids, y_true, y_prob, thresholds, info, config=run.config,
                                   split=split,
                                   split_method=sources.split_method or run.config.get("split_method"),
                                   records=sources, run_dir=run.path, history_csv=run.path / runs.HISTORY,
                                   n_boot=n_boot, seed=seed, n_bins=n_bins, labels=shared, external=external,
                                   caveats=caveats)
    imported = run.config.get("imported")
    if external is None or imported:
        # An imported run has no records of its own: the user's records are its evidence (cxr_tf.inference.evidence).
        runs.record_evaluation(run.path, split, {**runs.split_block(summary, "evaluate"), "records": str(sources)})
    summary["out"] = str(out)
    return summary
