"""Data exploration: the figures every study of ChestX-ray14 starts with.

    python -m cxr_tf.explore --labels /data/nih/Data_Entry_2017_v2020.csv.gz --out explore/
    python -m cxr_tf.explore --records records/ --out explore/

From a label table (read with ``cxr_tf.data.datasets.nih.read_label_table``, either NIH layout)
or a records folder (the TFRecords' metadata features; images are not decoded),
writes: label distribution (per split for records), label co-occurrence, findings
per film, age, sex and view-position distributions, ``summary.json`` and
``explore.md`` linking every figure. The full 112,120-row table takes seconds.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.evaluation import plots
from cxr_tf.data.datasets.base import MISSING
from cxr_tf.data.labels import LABELS, NO_FINDING

PLAUSIBLE_AGE = 100
"""Ages above this are reported as implausible (the NIH table holds a few, e.g. 414)
and left out of the age histogram, not silently clipped."""


def table_from_labels(path):
    """Per-film DataFrame (image_index, patient_id, age, sex, view, 14 label columns)
    from an NIH label table."""
    from cxr_tf.data.datasets.nih import read_label_table

    table = read_label_table(path)
    return table[["image_index", "patient_id", "age", "sex", "view", *LABELS]]


def table_from_records(records_dir):
    """Per-film DataFrame from every shard of a records folder, with a ``split``
    column (from the shard names) and one column per finding of the records' label set
    (``table.attrs["labels"]``); only the metadata features are parsed."""
    import tensorflow as tf

    from cxr_tf.data import manifest
    from cxr_tf.data.records import features, parse_shard_name

    records_dir = Path(records_dir)
    shards = sorted(records_dir.glob("*.tfrecord"))
    if not shards:
        raise FileNotFoundError(f"no *.tfrecord shards in {records_dir}; build them with tools/build_tfrecords.py")
    labels = list(manifest.read(records_dir).labels)
    spec = {k: v for k, v in features(len(labels)).items() if k != "image"}
    frames = []
    for shard in shards:
        split = parse_shard_name(shard.name)[0]
        for batch in tf.data.TFRecordDataset(str(shard)).batch(4096):
            parsed = tf.io.parse_example(batch, spec)
            frame = pd.DataFrame({
                "image_index": [v.decode() for v in parsed["image_index"].numpy()],
                "patient_id": parsed["patient_id"].numpy(),
                "age": parsed["age"].numpy(),
                "sex": [v.decode() for v in parsed["sex"].numpy()],
                "view": [v.decode() for v in parsed["view"].numpy()],
                "split": split,
            })
            frame[labels] = parsed["labels"].numpy().astype(np.int8)  # -1: missing
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs["labels"] = labels
    return table


def cooccurrence_matrix(labels):
    """(K, K) int: films carrying both findings; the diagonal counts films with each."""
    y = np.asarray(labels, dtype=np.int64)
    return y.T @ y


def summarize_table(table, labels=None):
    """JSON-ready counts: films, patients, per-finding counts (positive films) and prevalence
    (among the films where the finding is labelled: a -1 label, ``MISSING``, counts nowhere;
    None when no film is labelled), No Finding, findings per film, age statistics
    (implausible ages counted), sex and view counts, co-occurrence; per split too when a
    ``split`` column exists. labels: the finding columns (default ``table.attrs["labels"]``,
    else NIH's 14)."""
    labels = list(labels or table.attrs.get("labels") or LABELS)
    y = table[labels].to_numpy(np.int64) == 1
    labelled = (table[labels].to_numpy(np.int64) != MISSING).sum(axis=0)
    ages = table["age"].to_numpy()
    plausible = ages[ages <= PLAUSIBLE_AGE]
    per_film = y.sum(axis=1)
    summary = {
        "films": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "labels": labels,
        "label_counts": {name: int(c) for name, c in zip(labels, y.sum(axis=0))},
        "prevalence": {name: float(c) / n if n else None for name, c, n in zip(labels, y.sum(axis=0), labelled)},
        NO_FINDING: int((per_film == 0).sum()),
        "findings_per_film": {str(k): int(v) for k, v in zip(*np.unique(per_film, return_counts=True))},
        "age": {"mean": float(plausible.mean()) if len(plausible) else None,
                "median": float(np.median(plausible)) if len(plausible) else None,
                "min": int(ages.min()) if len(ages) else None, "max": int(ages.max()) if len(ages) else None,
                f"implausible_over_{PLAUSIBLE_AGE}": int((ages > PLAUSIBLE_AGE).sum())},
        "sex": {k: int(v) for k, v in table["sex"].value_counts().items()},
        "view": {k: int(v) for k, v in table["view"].value_counts().items()},
        "films_per_patient": {"mean": float(table.groupby("patient_id").size().mean()) if len(table) else None,
                              "max": int(table.groupby("patient_id").size().max()) if len(table) else None},
        "cooccurrence": cooccurrence_matrix(y).tolist(),
    }
    if "split" in table.columns:
        summary["splits"] = {
            split: {"films": int(len(part)), "patients": int(part["patient_id"].nunique()),
                    "label_counts": {n: int(c) for n, c in zip(labels, (part[labels] == 1).sum().to_numpy())}}
            for split, part in table.groupby("split", sort=False)
        }
    return summary


def explore(out, labels=None, records=None):
    """Write the exploration figures, summary.json and explore.md to ``out`` from a
    label table (``labels``) or a records folder (``records``). Returns the summary
    dict with ``"figures"`` {name: file name}."""
    if (labels is None) == (records is None):
        raise ValueError("pass exactly one of labels (an NIH label table) or records (a records folder)")
    table = table_from_labels(labels) if labels is not None else table_from_records(records)
    source = str(labels if labels is not None else records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_table(table)
    n = summary["films"]
    figures = {}
    if "splits" in summary:
        figures["label_distribution"] = plots.label_distribution(
            {s: v["label_counts"] for s, v in summary["splits"].items()}, out / "label_distribution.png",
            totals={s: v["films"] for s, v in summary["splits"].items()},
            title="Label prevalence per split")
    else:
        figures["label_distribution"] = plots.label_distribution(
            {**summary["label_counts"], NO_FINDING: summary[NO_FINDING]}, out / "label_distribution.png",
            title=f"Label distribution ({n:,} films; a film may carry several)")
    figures["cooccurrence"] = plots.cooccurrence(np.array(summary["cooccurrence"]), out / "cooccurrence.png",
                                                 labels=summary["labels"])
    figures["findings_per_film"] = plots.category_bars(
        {f"{k} finding{'s' if k != '1' else ''}": v for k, v in summary["findings_per_film"].items()},
        out / "findings_per_film.png", "Findings per film (0 = No Finding)")
    ages = table["age"].to_numpy()
    over = summary["age"][f"implausible_over_{PLAUSIBLE_AGE}"]
    figures["age"] = plots.histogram(
        None, out / "age.png", f"Patient age ({over} implausible ages > {PLAUSIBLE_AGE} left out)",
        "age (years)", bins=20, range_=(0, PLAUSIBLE_AGE),
        groups={sex: ages[(table["sex"] == sex).to_numpy() & (ages <= PLAUSIBLE_AGE)]
                for sex in sorted(table["sex"].unique())})
    figures["sex"] = plots.category_bars(summary["sex"], out / "sex.png", "Patient sex")
    figures["view"] = plots.category_bars(summary["view"], out / "view.png", "View position")
    summary["source"] = source
    summary["figures"] = {k: v.name for k, v in figures.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _write_markdown(out / "explore.md", summary)
    return summary


def _write_markdown(path, summary):
    lines = [f"# Data exploration: {summary['source']}", "",
             f"{summary['films']:,} films of {summary['patients']:,} patients; "
             f"{summary[NO_FINDING]:,} ({100 * summary[NO_FINDING] / max(summary['films'], 1):.1f}%) No Finding; "
             f"median age {summary['age']['median']}, "
             f"{summary['age'][f'implausible_over_{PLAUSIBLE_AGE}']} implausible ages (> {PLAUSIBLE_AGE}).", "",
             "| finding | films | prevalence |", "| --- | --- | --- |"]
    lines += [f"| {n} | {summary['label_counts'][n]:,} | "
              + (f"{100 * summary['prevalence'][n]:.2f}% |" if summary["prevalence"][n] is not None else "– |")
              for n in summary["labels"]]
    lines.append("")
    if "splits" in summary:
        lines += ["| split | films | patients |", "| --- | --- | --- |"]
        lines += [f"| {s} | {v['films']:,} | {v['patients']:,} |" for s, v in summary["splits"].items()]
        lines.append("")
    for key, name in summary["figures"].items():
        lines += [f"![{key}]({name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
