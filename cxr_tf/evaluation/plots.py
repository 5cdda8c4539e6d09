"""PNG figures for evaluation, training and data exploration (matplotlib, Agg).

Every function takes arrays (or a CSV path) and an output path, writes one PNG
and returns its Path. Figures are built with ``matplotlib.figure.Figure`` and an
Agg canvas, so importing this module never switches pyplot's global backend and
nothing needs a display. Label arrays may hold -1 for a missing label
(``cxr_tf.evaluation.metrics``): each finding's curves use the films where it is known.
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_tf.data.labels import LABELS
from cxr_tf.evaluation.metrics import known_pair, reliability_curve, undefined_reason

DPI = 110
HIGHLIGHT_MODELS = (
    "CheXNet (Rajpurkar 2017)",
    "Wang 2017 (ChestX-ray8)",
    "Multimodal CNN (multimodal-CNN study)",
    "Fusion network (fusion study)",
)
"""Published models drawn as named markers beside ours; the others appear as a grey range."""


def _figure(width, height):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png):
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, bbox_inches="tight")
    return out_png


def _grid(n, cols=4):
    return cols, int(np.ceil(n / cols))


def _undefined_panel(ax, reason):
    ax.text(0.5, 0.5, f"undefined:\n{reason}", ha="center", va="center", fontsize=8, wrap=True)


def _finding_panels(y_true, labels, draw, title, xlabel, ylabel, ylim, out_png):
    """One panel per finding (4 columns): ``draw(ax, k)`` plots finding ``k`` and
    returns its title; findings with no known positives, negatives or labels get a
    panel saying why they have no curve."""
    cols, rows = _grid(len(labels))
    fig = _figure(3.0 * cols, 2.8 * rows)
    for k, name in enumerate(labels):
        ax = fig.add_subplot(rows, cols, k + 1)
        reason = undefined_reason(y_true[:, k])
        if reason:
            _undefined_panel(ax, reason)
            ax.set_title(name, fontsize=9)
        else:
            ax.set_title(draw(ax, k), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(*ylim)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if k >= len(labels) - cols:
            ax.set_xlabel(xlabel, fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=0.93, hspace=0.35, wspace=0.2)
    return _save(fig, out_png)


def roc_curves(y_true, y_prob, out_png, labels=LABELS, aucs=None):
    """One ROC panel per finding (4 columns), AUC in each title; findings with no
    positives or no negatives get a panel saying why they have no curve."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)

    def draw(ax, k):
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        fpr, tpr, _ = roc_curve(*known_pair(y_true[:, k], y_prob[:, k]))
        ax.plot(fpr, tpr, c="C0", lw=1.4)
        auc = aucs.get(labels[k]) if aucs else None
        return labels[k] + (f"  AUC {auc:.3f}" if auc is not None else "")

    return _finding_panels(y_true, labels, draw, "ROC curves per finding",
                           "1 - specificity", "sensitivity", (0, 1), out_png)


def pr_curves(y_true, y_prob, out_png, labels=LABELS, aps=None):
    """One precision-recall panel per finding, with the prevalence (a random
    classifier's precision) as a dotted line."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)

    def draw(ax, k):
        y, p = known_pair(y_true[:, k], y_prob[:, k])
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(recall, precision, where="post", c="C1", lw=1.4)
        ax.axhline(float(np.mean(y)), ls=":", c="grey", lw=0.8)
        ap = aps.get(labels[k]) if aps else None
        return labels[k] + (f"  AP {ap:.3f}" if ap is not None else "")

    return _finding_panels(y_true, labels, draw, "Precision-recall curves per finding (dotted: prevalence)",
                           "recall (sensitivity)", "precision (PPV)", (0, 1.02), out_png)


def auc_bars(per_finding, out_png, literature=None, our_name="this model", our_split="",
             labels=LABELS, highlight=HIGHLIGHT_MODELS):
    """Horizontal bars of our per-finding AUC with 95% CI whiskers, beside published
    results: the ``highlight`` models as markers and the range of all published
    models as a grey line.

    per_finding: {finding: {"auc": float|None, "auc_ci": [low, high]|None}};
    literature: DataFrame from ``cxr_tf.evaluation.literature.load_literature()`` or None.
    Undefined findings get no bar and an "undefined" note."""
    n = len(labels)
    fig = _figure(9.0, 0.45 * n + 1.8)
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(n)[::-1]
    if literature is not None and len(literature):
        values = literature.reindex(columns=list(labels)).to_numpy(dtype=np.float64)  # NaN: not published
        published = ~np.isnan(values).all(axis=0)  # findings outside NIH's 14 have no published row
        if published.any():
            ax.hlines(ypos[published], np.nanmin(values[:, published], axis=0),
                      np.nanmax(values[:, published], axis=0), colors="dimgrey", lw=3, alpha=0.45,
                      label="published range (all rows)", zorder=3)
        markers = "os^Dv<>p"
        for i, model in enumerate(m for m in highlight if m in set(literature["model"])):
            row = literature[literature["model"] == model].iloc[0]
            ax.scatter([row.get(name, np.nan) for name in labels], ypos, marker=markers[i % len(markers)], s=24,
                       zorder=4, label=f"{model} ({row['split']})")
    aucs = [per_finding.get(name, {}).get("auc") for name in labels]
    bar_vals = [a if a is not None else 0.0 for a in aucs]
    err = np.zeros((2, n))
    for k, name in enumerate(labels):
        ci = per_finding.get(name, {}).get("auc_ci")
        if aucs[k] is not None and ci and ci[0] is not None:
            err[:, k] = (aucs[k] - ci[0], ci[1] - aucs[k])
    ax.barh(ypos, bar_vals, height=0.6, color="lightsteelblue", xerr=np.clip(err, 0, None),
            error_kw={"lw": 1, "capsize": 2}, label=f"{our_name} ({our_split})" if our_split else our_name,
            zorder=2)
    for k in range(n):
        if aucs[k] is None:
            ax.text(0.01, ypos[k], "undefined in this split", va="center", fontsize=8, color="firebrick")
    ax.set_yticks(ypos, labels, fontsize=9)
    # the whole 0-1 range: a finding below chance must show as a short bar, not vanish
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("ROC-AUC (bars: ours with 95% patient-bootstrap CI; dashed line: chance, 0.5)")
    ax.axvline(0.5, c="grey", lw=0.8, ls="--", zorder=1)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    ax.set_title("Per-finding AUC beside published results (splits differ: not directly comparable)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def reliability_diagram(y_true, y_prob, out_png, labels=LABELS, n_bins=10):
    """Fraction positive against mean predicted probability in equal-width bins:
    one thin line per finding, all findings pooled in bold, the diagonal for perfect
    calibration, and a histogram of predicted probabilities (of known labels) underneath."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    fig = _figure(7.5, 8.0)
    ax = fig.add_axes([0.1, 0.35, 0.62, 0.58])
    hist = fig.add_axes([0.1, 0.07, 0.62, 0.2])
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfect calibration")
    cmap = [f"C{i % 10}" for i in range(len(labels))]
    for k, name in enumerate(labels):
        curve = reliability_curve(y_true[:, k], y_prob[:, k], n_bins)
        used = curve["count"] > 0
        ax.plot(curve["mean_prob"][used], curve["frac_positive"][used], lw=0.9, alpha=0.6, c=cmap[k],
                ls="-" if k < 10 else "--", marker=".", ms=3, label=name)
    y_known, p_known = known_pair(y_true.ravel(), y_prob.ravel())
    pooled = reliability_curve(y_known, p_known, n_bins)
    used = pooled["count"] > 0
    ax.plot(pooled["mean_prob"][used], pooled["frac_positive"][used], c="black", lw=2.4, marker="o",
            ms=4, label="all findings pooled")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of films positive")
    ax.set_title(f"Reliability diagram ({n_bins} equal-width bins)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    hist.hist(p_known, bins=np.linspace(0, 1, 2 * n_bins + 1), color="grey", log=True)
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("(film, finding)\npairs (log)", fontsize=8)
    return _save(fig, out_png)


def training_curves(history_csv, out_png):
    """Curves of every metric in a Keras ``history.csv`` (CSVLogger layout): one
    panel per metric with its ``val_`` twin; the learning rate (if logged) on a log
    scale. The x axis is the row number (epochs across all training phases);
    a ``phase`` column, if present, draws a vertical line where it changes."""
    import pandas as pd  # local: only this plot reads CSV

    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise FileNotFoundError(f"training history {history_csv} not found; it is written by cxr_tf.training.trainer")
    frame = pd.read_csv(history_csv)
    if frame.empty:
        raise ValueError(f"{history_csv}: no epochs recorded")
    x = np.arange(1, len(frame) + 1)
    skip = {"epoch", "phase", "step", "time"}
    lr_cols = [c for c in frame.columns if c in ("lr", "learning_rate")]
    numeric = [c for c in frame.columns if c not in skip and c not in lr_cols
               and pd.api.types.is_numeric_dtype(frame[c])]
    bases = [c for c in numeric if not c.startswith("val_")]
    bases += [c[4:] for c in numeric if c.startswith("val_") and c[4:] not in bases]
    panels = bases + (["learning rate"] if lr_cols else [])
    if not panels:
        raise ValueError(f"{history_csv}: no numeric metric columns in {list(frame.columns)}")
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = _figure(4.2 * cols, 3.0 * rows)
    changes = []
    if "phase" in frame.columns:
        phase = frame["phase"].astype(str).to_numpy()
        changes = [i + 0.5 for i in range(1, len(phase)) if phase[i] != phase[i - 1]]
    for i, name in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if name == "learning rate":
            ax.plot(x, frame[lr_cols[0]], c="C2", marker=".")
            if (frame[lr_cols[0]] > 0).all():
                ax.set_yscale("log")
        else:
            if name in frame.columns:
                ax.plot(x, frame[name], marker=".", label="train")
            if f"val_{name}" in frame.columns:
                ax.plot(x, frame[f"val_{name}"], marker=".", label="validation")
            ax.legend(fontsize=7)
        for c in changes:
            ax.axvline(c, c="grey", ls="--", lw=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Training curves" + (" (dashed: phase change)" if changes else ""), fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)


def label_distribution(counts, out_png, totals=None, title="Label distribution"):
    """Horizontal bars of films per finding.

    counts: {finding: int} for one group, or {group: {finding: int}} for several
    (e.g. splits), drawn side by side; totals ({group: films}) turns counts into
    percentages, so groups of different size compare. A group's total may be a
    {finding: films} dict (the films where each finding is labelled): percentages of
    labelled films."""
    groups = counts if counts and isinstance(next(iter(counts.values())), dict) else {"": counts}
    names = list(next(iter(groups.values())).keys())
    n, g = len(names), len(groups)
    fig = _figure(8.0, 0.35 * n * max(1, g * 0.6) + 1.5)
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(n)[::-1].astype(float)
    height = 0.8 / g
    for i, (group, values) in enumerate(groups.items()):
        vals = np.array([values.get(name, 0) for name in names], dtype=np.float64)
        total = (totals or {}).get(group) if totals else None
        if isinstance(total, dict):
            per_finding = np.array([total.get(name, 0) for name in names], dtype=np.float64)
            vals = np.divide(100.0 * vals, per_finding, out=np.zeros_like(vals), where=per_finding > 0)
        elif total:
            vals = 100.0 * vals / total
        offs = ypos + 0.4 - height * (i + 0.5)
        ax.barh(offs, vals, height=height, label=group or None, color=f"C{i}")
        for y, v in zip(offs, vals):
            ax.text(v, y, f" {v:.1f}%" if total else f" {int(v):,}", va="center", fontsize=7)
    ax.set_yticks(ypos, names, fontsize=9)
    labelled = any(isinstance(t, dict) for t in (totals or {}).values())
    ax.set_xlabel("% of labelled films" if labelled else "% of films" if totals else "films")
    ax.set_title(title)
    if g > 1:
        ax.legend(fontsize=8)
    ax.margins(x=0.15)
    fig.tight_layout()
    return _save(fig, out_png)


def cooccurrence(matrix, out_png, labels=LABELS, title="Label co-occurrence (films with both)"):
    """Heat map of a (K, K) co-occurrence count matrix (diagonal: films with the
    finding), colour on a log scale, counts written in the cells."""
    from matplotlib.colors import LogNorm

    matrix = np.asarray(matrix)
    fig = _figure(9.5, 8.0)
    ax = fig.add_subplot(1, 1, 1)
    shown = np.where(matrix > 0, matrix, np.nan)
    vmax = max(float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0, 1.0)
    im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(vmax, 1.0 + 1e-9)))
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=6,
                    color="white" if matrix[i, j] < vmax ** 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="films (log scale)")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out_png)


def histogram(values, out_png, title, xlabel, bins=20, range_=None, groups=None):
    """Histogram of numeric values; ``groups`` ({name: values}) overlays several."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    series = groups if groups else {"": values}
    for i, (name, vals) in enumerate(series.items()):
        ax.hist(np.asarray(vals, dtype=np.float64), bins=bins, range=range_, alpha=0.6 if groups else 0.9,
                color=f"C{i}", label=name or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("films")
    ax.set_title(title)
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def category_bars(counts, out_png, title, xlabel="films"):
    """Bars of category counts ({category: int}), each bar annotated with count and %."""
    names = list(counts)
    vals = np.array([counts[n] for n in names], dtype=np.float64)
    total = vals.sum() or 1.0
    fig = _figure(6.0, 0.5 * len(names) + 1.5)
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(len(names))[::-1]
    ax.barh(ypos, vals, color=[f"C{i}" for i in range(len(names))])
    for y, v in zip(ypos, vals):
        ax.text(v, y, f" {int(v):,} ({100 * v / total:.1f}%)", va="center", fontsize=8)
    ax.set_yticks(ypos, names)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.25)
    fig.tight_layout()
    return _save(fig, out_png)
