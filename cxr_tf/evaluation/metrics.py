"""Evaluation metrics for multi-label predictions: pure numpy and scikit-learn.

Every function takes ``y_true`` (N, K) and ``y_prob`` (N, K) in [0, 1], columns in
``cxr_tf.data.labels.LABELS`` order unless ``labels`` says otherwise.

Missing labels
    ``y_true`` holds 1 (positive), 0 (negative) or -1 (``MISSING``, from
    ``cxr_tf.data.datasets.base``: a finding the film's dataset does not label, or an
    uncertain label under the "ignore" policy). This is the convention of the whole
    package (the losses and the training AUC mask it too). A missing label
    counts nowhere: every per-finding metric (AUC, AP, prevalence, confusion counts, Brier,
    calibration, the bootstrap) uses only the films where that finding is known
    (``n_known``), and the micro scores pool the known (film, finding) pairs only.

Policy for findings that a split cannot score
    A finding whose known labels have no positives (or no negatives), or which has no
    known label at all, has no ROC-AUC and no average precision. It is reported with
    ``defined: False`` and the reason (``NO_POSITIVES``, ``NO_NEGATIVES``,
    ``NOT_LABELLED``), its ranking metrics are ``None`` (``null`` in JSON), and it is
    left out of the macro averages; the macro block lists every excluded finding with its
    reason. Nothing is reported as 0. Prevalence, Brier score and calibration error stay
    defined and are reported (``None`` for a finding with no known label, and then left
    out of their macro means). Operating-point ratios whose denominator is zero (e.g. PPV
    when nothing is called positive) are ``None`` too.

Confidence intervals
    ROC-AUC intervals come from a percentile bootstrap over *patients*: each
    replicate draws patients with replacement and takes all of their films, so
    films of one patient (follow-ups, strongly correlated) move together; each finding
    then scores the drawn films where it is known. The generator is a seeded
    ``numpy.random.Generator``; no global state is touched.
"""

import numpy as np
import scipy.sparse
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf.data.datasets.base import MISSING
from cxr_tf.data.labels import LABELS

NO_POSITIVES = "no positive films in this split"
NO_NEGATIVES = "no negative films in this split"
NOT_LABELLED = "not labelled in this split"
OPERATING_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")


# --------------------------------------------------------------------------- validation
def check_arrays(y_true, y_prob, labels=LABELS):
    """Validated copies: y_true as int8 (N, K) in {1, 0, MISSING}, y_prob as float64 (N, K).

    Raises ValueError naming the first bad row and finding."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    k = len(labels)
    if y_true.ndim != 2 or y_true.shape[1] != k:
        raise ValueError(f"y_true must have shape (N, {k}), got {y_true.shape}")
    if y_prob.shape != y_true.shape:
        raise ValueError(f"y_prob shape {y_prob.shape} differs from y_true shape {y_true.shape}")
    bad = ~np.isin(y_true, (0, 1, MISSING))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"y_true row {row}, {labels[col]}: label {y_true[row, col]} is not 0, 1 or "
                         f"{MISSING} (missing)")
    bad = ~np.isfinite(y_prob) | (y_prob < 0) | (y_prob > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"y_prob row {row}, {labels[col]}: probability {y_prob[row, col]!r} is not in [0, 1]")
    return y_true.astype(np.int8), y_prob


def known(y_col):
    """Boolean mask of the films whose label is known (not ``MISSING``) in one label column."""
    return np.asarray(y_col) != MISSING


def undefined_reason(y_col):
    """Why a ranking metric is undefined for one label column (missing labels ignored),
    or None if it is defined."""
    y_col = np.asarray(y_col)
    y_col = y_col[known(y_col)]
    if len(y_col) == 0:
        return NOT_LABELLED
    positives = int(np.sum(y_col))
    if positives == 0:
        return NO_POSITIVES
    if positives == len(y_col):
        return NO_NEGATIVES
    return None


def known_pair(y_col, prob_col):
    """(labels, probabilities) of the films where this finding is known."""
    rows = known(y_col)
    return np.asarray(y_col)[rows], np.asarray(prob_col)[rows]


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- ranking
def roc_auc(y_true, y_prob, labels=LABELS):
    """{finding: ROC-AUC over the films where it is known, or None (undefined)}."""
    y_true, y_prob = check_arrays(y_true, y_prob, labels)
    return {
        name: None if undefined_reason(y_true[:, k]) else float(roc_auc_score(*known_pair(y_true[:, k], y_prob[:, k])))
        for k, name in enumerate(labels)
    }


def average_precision(y_true, y_prob, labels=LABELS):
    """{finding: average precision (area under the PR curve, step-wise) over the films
    where it is known, or None}."""
    y_true, y_prob = check_arrays(y_true, y_prob, labels)
    return {
        name: None
        if undefined_reason(y_true[:, k])
        else float(average_precision_score(*known_pair(y_true[:, k], y_prob[:, k])))
        for k, name in enumerate(labels)
    }


def prevalence(y_true, labels=LABELS):
    """{finding: fraction positive of the films where it is known, None if none is}."""
    y_true = np.asarray(y_true)
    columns = (y_true[known(y_true[:, k]), k] for k in range(len(labels)))
    return {name: float(np.mean(col)) if len(col) else None for name, col in zip(labels, columns)}


def micro_scores(y_true, y_prob):
    """Micro-averaged ROC-AUC and AP: all known (film, finding) pairs pooled into one
    binary problem (scikit-learn's ``average="micro"``). Every finding contributes,
    including those undefined on their own; None if the pooled set is one class."""
    y_true, y_prob = known_pair(np.asarray(y_true).ravel(), np.asarray(y_prob, dtype=np.float64).ravel())
    if undefined_reason(y_true):
        return {"auc": None, "average_precision": None}
    return {
        "auc": float(roc_auc_score(y_true, y_prob)),
        "average_precision": float(average_precision_score(y_true, y_prob)),
    }


# --------------------------------------------------------------------------- bootstrap
class PatientAUC:
    """ROC-AUC of one finding under many patient reweightings at once (the bootstrap kernel).

    y: (N,) in {0, 1}; score: (N,); patient_of_film: (N,) ints in [0, n_patients).
    ``self(counts)`` with counts (B, n_patients) (how often each patient was drawn)
    returns (B,) AUCs, NaN where a replicate has no positive or no negative film.
    The value equals scikit-learn's ``roc_auc_score(y, score, sample_weight=w)`` with
    ``w = counts[b, patient_of_film]`` (Mann-Whitney, ties count one half).

    Why this shape: only the cumulative negative weight *at the positive films'
    scores* matters, so films are folded into sparse (patient x positive-score)
    matrices once, and each replicate costs O(films + positive scores) rather
    than a sort.
    """

    def __init__(self, y, score, patient_of_film, n_patients):
        y = np.asarray(y).astype(bool)
        score = np.asarray(score, dtype=np.float64)
        pos_scores = np.unique(score[y])  # sorted distinct scores of positive films, (Q,)
        q = len(pos_scores)
        pat_pos, pat_neg = patient_of_film[y], patient_of_film[~y]
        neg_score = score[~y]
        # A negative film counts as "below" every positive score greater than its own:
        # bin r = number of positive scores <= its score; below[:, j] = sum of bins r <= j.
        bins = np.searchsorted(pos_scores, neg_score, side="right")
        tie_idx = np.searchsorted(pos_scores, neg_score, side="left")
        tie = np.isin(neg_score, pos_scores)  # negatives scored exactly like some positive

        def sparse(rows, cols, ncols):
            return scipy.sparse.csc_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_patients, ncols))

        self.q = q
        self.pos = sparse(pat_pos, np.searchsorted(pos_scores, score[y]), q)
        self.neg_bins = sparse(pat_neg, bins, q + 1)
        self.neg_ties = sparse(pat_neg[tie], tie_idx[tie], q)
        self.neg_per_patient = np.bincount(pat_neg, minlength=n_patients).astype(np.float64)

    def __call__(self, counts):
        counts = np.asarray(counts, dtype=np.float64)
        neg_total = counts @ self.neg_per_patient  # (B,)
        if self.q == 0:
            return np.full(len(counts), np.nan)
        pos = (self.pos.T @ counts.T).T  # (B, Q) positive weight at each positive score
        below = np.cumsum((self.neg_bins.T @ counts.T).T[:, : self.q], axis=1)  # (B, Q)
        ties = (self.neg_ties.T @ counts.T).T
        num = np.sum(pos * (below + 0.5 * ties), axis=1)
        den = pos.sum(axis=1) * neg_total
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auc(y_true, y_prob, patient_ids, n_boot=1000, seed=0, confidence=0.95, labels=LABELS,
                  chunk_elements=2_000_000):
    """Percentile bootstrap CI of each finding's ROC-AUC and of the macro AUC,
    resampling patients (all films of a drawn patient enter the replicate).

    patient_ids: (N,) one id per film. Returns
    ``{"per_finding": {finding: {"low", "high", "valid_replicates"}}, "macro": {...},
    "n_boot", "seed", "confidence", "unit": "patient", "num_patients"}``.
    Each finding uses the drawn films where it is known.
    A replicate in which a finding has no positive (or no negative) film is skipped
    for that finding, and ``valid_replicates`` says how many were left; the macro
    replicate averages the findings that are defined on the full split and is skipped
    when any of them is undefined in that replicate. low/high are None for findings
    undefined on the full split or with fewer than 2 valid replicates.
    """
    y_true, y_prob = check_arrays(y_true, y_prob, labels)
    patient_ids = np.asarray(patient_ids)
    if patient_ids.shape != (len(y_true),):
        raise ValueError(f"patient_ids must have shape ({len(y_true)},), got {patient_ids.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    uniq, patient_of_film = np.unique(patient_ids, return_inverse=True)
    n_pat, k = len(uniq), len(labels)
    defined = [undefined_reason(y_true[:, j]) is None for j in range(k)]
    rows = [known(y_true[:, j]) for j in range(k)]  # each finding scores its known films of a replicate
    kernels = [PatientAUC(y_true[rows[j], j], y_prob[rows[j], j], patient_of_film[rows[j]], n_pat)
               if defined[j] else None for j in range(k)]
    rng = np.random.default_rng(seed)
    aucs = np.full((n_boot, k), np.nan)
    step = max(1, chunk_elements // max(n_pat, 1))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        # How often each patient is drawn in each of b replicates: n_pat draws with replacement.
        counts = rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=b)  # (b, n_pat)
        for j, kernel in enumerate(kernels):
            if kernel is not None:
                aucs[start:start + b, j] = kernel(counts)
    tail = 100 * (1 - confidence) / 2

    def interval(values):
        values = values[~np.isnan(values)]
        if len(values) < 2:
            return {"low": None, "high": None, "valid_replicates": int(len(values))}
        low, high = np.percentile(values, [tail, 100 - tail])
        return {"low": float(low), "high": float(high), "valid_replicates": int(len(values))}

    per_finding = {name: interval(aucs[:, j]) for j, name in enumerate(labels)}
    cols = [j for j in range(k) if defined[j]]
    macro = interval(aucs[:, cols].mean(axis=1)) if cols else interval(np.array([]))
    return {
        "per_finding": per_finding,
        "macro": macro,
        "n_boot": int(n_boot),
        "seed": seed,
        "confidence": confidence,
        "method": "percentile",
        "unit": "patient",
        "num_patients": int(n_pat),
    }


# --------------------------------------------------------------------------- operating points
def _ratio(num, den):
    return float(num / den) if den > 0 else None


def confusion_counts(y_col, prob_col, threshold):
    """(tp, fp, tn, fn) over the films where the finding is known, a film called positive
    when ``prob >= threshold``."""
    y, prob = known_pair(y_col, prob_col)
    y = y.astype(bool)
    pred = prob >= threshold
    return (int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & ~y)), int(np.sum(~pred & y)))


def rates_from_counts(tp, fp, tn, fn):
    """Sensitivity, specificity, PPV, NPV, F1 from confusion counts; None where the
    denominator is zero (sensitivity with no positives, PPV with no positive calls...)."""
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def operating_points(y_true, y_prob, thresholds, labels=LABELS):
    """Per finding at its threshold (``prob >= threshold`` is positive):
    ``{finding: {"threshold", "tp", "fp", "tn", "fn", sensitivity, specificity, ppv, npv, f1}}``,
    plus ``"micro"`` (counts summed over findings) and ``"macro"`` (mean of each
    rate over the findings where it is defined). Counts are over the films where the
    finding is known.

    thresholds: {finding: float}; every finding in ``labels`` must have one."""
    y_true, y_prob = check_arrays(y_true, y_prob, labels)
    missing = [name for name in labels if name not in thresholds]
    if missing:
        raise ValueError(f"thresholds lack findings {missing}; expected one float per finding in {list(labels)}")
    out, totals = {}, np.zeros(4, dtype=np.int64)
    for k, name in enumerate(labels):
        threshold = float(thresholds[name])
        counts = confusion_counts(y_true[:, k], y_prob[:, k], threshold)
        totals += counts
        out[name] = {"threshold": threshold, **dict(zip(("tp", "fp", "tn", "fn"), counts)),
                     **rates_from_counts(*counts)}
    out["micro"] = {**dict(zip(("tp", "fp", "tn", "fn"), (int(t) for t in totals))),
                    **rates_from_counts(*totals)}
    out["macro"] = {m: _mean_or_none(out[name][m] for name in labels) for m in OPERATING_METRICS}
    return out


# --------------------------------------------------------------------------- calibration
def brier_score(y_col, prob_col):
    """Mean squared difference between probability and outcome (0 best, 1 worst) over the
    films where the finding is known; None if none is."""
    y, p = known_pair(y_col, prob_col)
    y, p = y.astype(np.float64), p.astype(np.float64)
    return float(np.mean((p - y) ** 2)) if len(y) else None


def reliability_curve(y_col, prob_col, n_bins=10):
    """Equal-width probability bins on [0, 1] (the last bin includes 1.0), over the films
    where the finding is known.

    Returns dict of arrays of length n_bins: ``mean_prob``, ``frac_positive``
    (NaN for empty bins), ``count``, and ``edges`` (n_bins + 1)."""
    y, p = known_pair(y_col, prob_col)
    y, p = y.astype(np.float64), p.astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac_pos = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return {"mean_prob": mean_prob, "frac_positive": frac_pos, "count": count, "edges": edges}


def expected_calibration_error(y_col, prob_col, n_bins=10):
    """ECE: sum over equal-width bins of (films in bin / N) * |fraction positive - mean probability|,
    N the films where the finding is known; None if none is."""
    curve = reliability_curve(y_col, prob_col, n_bins)
    n = curve["count"].sum()
    if n == 0:
        return None
    used = curve["count"] > 0
    gap = np.abs(curve["frac_positive"][used] - curve["mean_prob"][used])
    return float(np.sum(curve["count"][used] / n * gap))


def auc_summary(y_true, y_prob, labels=LABELS):
    """{"num_examples", "auc": {finding: float | None}, "macro_auc", "excluded": {finding: reason}}:
    the headline of one split (``fit`` writes it for val and test). Findings without known positives
    (or negatives, or any known label) have no AUC and are left out of the macro mean, as in
    ``summarize``."""
    per_class = roc_auc(y_true, y_prob, labels)
    y_true = np.asarray(y_true)
    excluded = {name: undefined_reason(y_true[:, k]) for k, name in enumerate(labels) if per_class[name] is None}
    return {"num_examples": int(len(y_true)), "auc": per_class,
            "macro_auc": _mean_or_none(v for v in per_class.values() if v is not None), "excluded": excluded}


# --------------------------------------------------------------------------- everything
def summarize(y_true, y_prob, patient_ids, thresholds=None, n_boot=1000, seed=0, confidence=0.95,
              n_bins=10, labels=LABELS):
    """All metrics of one split as a JSON-ready dict.

    ``{"num_examples", "num_patients", "per_finding": {finding: {...}}, "macro": {...},
    "micro": {...}, "bootstrap": {...}}``. Per finding: n_known (films where it is
    labelled), n_positive, n_negative, prevalence, defined, undefined_reason, auc,
    auc_ci [low, high], average_precision, brier, ece, and (with thresholds) threshold,
    tp, fp, tn, fn, sensitivity, specificity, ppv, npv, f1. ``macro`` averages over
    defined findings only and lists the excluded ones with reasons in ``macro["excluded"]``
    (Brier and ECE: over the findings with a known label).
    n_boot=0 skips the bootstrap (auc_ci None).
    """
    y_true, y_prob = check_arrays(y_true, y_prob, labels)
    aucs = roc_auc(y_true, y_prob, labels)
    aps = average_precision(y_true, y_prob, labels)
    prev = prevalence(y_true, labels)
    boot = bootstrap_auc(y_true, y_prob, patient_ids, n_boot, seed, confidence, labels) if n_boot else None
    ops = operating_points(y_true, y_prob, thresholds, labels) if thresholds is not None else None
    per, excluded = {}, {}
    for k, name in enumerate(labels):
        reason = undefined_reason(y_true[:, k])
        if reason:
            excluded[name] = reason
        ci = boot["per_finding"][name] if boot else None
        row = {
            "n_known": int(np.sum(known(y_true[:, k]))),
            "n_positive": int(np.sum(y_true[:, k] == 1)),
            "n_negative": int(np.sum(y_true[:, k] == 0)),
            "prevalence": prev[name],
            "defined": reason is None,
            "undefined_reason": reason,
            "auc": aucs[name],
            "auc_ci": [ci["low"], ci["high"]] if ci else None,
            "auc_ci_valid_replicates": ci["valid_replicates"] if ci else None,
            "average_precision": aps[name],
            "brier": brier_score(y_true[:, k], y_prob[:, k]),
            "ece": expected_calibration_error(y_true[:, k], y_prob[:, k], n_bins),
        }
        if ops:
            row.update(ops[name])
        per[name] = row
    defined = [name for name in labels if name not in excluded]
    macro = {
        "auc": _mean_or_none(per[n]["auc"] for n in defined),
        "auc_ci": [boot["macro"]["low"], boot["macro"]["high"]] if boot else None,
        "average_precision": _mean_or_none(per[n]["average_precision"] for n in defined),
        "brier": _mean_or_none(per[n]["brier"] for n in labels),
        "ece": _mean_or_none(per[n]["ece"] for n in labels),
        "n_findings": len(defined),
        "excluded": excluded,
        "note": (f"AUC, AP and operating points: mean over the {len(defined)} findings defined in this split"
                 + (f"; excluded: {', '.join(f'{n} ({r})' for n, r in excluded.items())}" if excluded else "")),
    }
    micro = micro_scores(y_true, y_prob)
    if ops:
        # Same exclusion as AUC/AP: a finding without positives (or negatives) has no
        # meaningful F1/PPV/sensitivity, so it does not pull the macro operating point.
        macro.update({m: _mean_or_none(per[n][m] for n in defined) for m in OPERATING_METRICS})
        micro.update(ops["micro"])
    return {
        "num_examples": int(len(y_true)),
        "num_patients": int(len(np.unique(patient_ids))),
        "labels": list(labels),
        "per_finding": per,
        "macro": macro,
        "micro": micro,
        "bootstrap": ({**{key: boot[key] for key in ("n_boot", "seed", "confidence", "method", "unit")},
                       "macro_valid_replicates": boot["macro"]["valid_replicates"]} if boot else None),
    }
