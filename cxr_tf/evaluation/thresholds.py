"""Per-finding decision thresholds (operating points), chosen on the validation split.

Thresholds (operating points)
    ``<run>/thresholds.json`` is used when present (``cxr_tf.training.trainer`` writes it from the
    validation split). Otherwise they are chosen per finding on the **validation**
    split with ``choose_thresholds`` and saved to ``<run>/thresholds.json``, so
    ``cxr_tf.inference.predictor`` uses the same ones. The test films never choose a threshold.

Default threshold rule: F1-maximising
    Most findings have a prevalence of 1–5 %. Youden's J (max sensitivity +
    specificity - 1) ignores prevalence, so at 2 % prevalence it typically sits where
    most films are flagged and PPV is a few percent: a triage worklist full of false
    alarms. The F1 optimum balances PPV against sensitivity on the positive class and
    moves with prevalence. Youden's J remains available (``--threshold-method youden``)
    for screening settings where sensitivity and specificity are weighed equally.
"""

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_tf.data.labels import LABELS
from cxr_tf.evaluation import metrics

THRESHOLD_METHODS = ("f1", "youden")
DEFAULT_THRESHOLD_METHOD = "f1"
FALLBACK_THRESHOLD = 0.5
"""Used for a finding whose validation column has no known positives (or no known negatives,
or no known label): no threshold can be chosen there; the report names each such finding."""


def _f1_threshold(y, p):
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # thresholds ascend; among equal F1 take the highest threshold (fewer alarms)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(thresholds[best])


def _youden_threshold(y, p):
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds) & (thresholds <= 1.0)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])  # thresholds descend: ties keep the highest


def choose_thresholds(y_true, y_prob, method=DEFAULT_THRESHOLD_METHOD, labels=LABELS,
                      fallback=FALLBACK_THRESHOLD):
    """Per-finding decision thresholds chosen on (validation) arrays.

    y_true (N, K) in {0, 1, -1 (missing)}, y_prob (N, K) in [0, 1]; each finding uses the
    films where it is known (``cxr_tf.evaluation.metrics``). method "f1" (maximise F1,
    the default: see the module docstring) or "youden" (maximise sensitivity +
    specificity - 1). A film is positive when ``prob >= threshold``. Returns
    {finding: float} for every finding; a finding with no known positives or negatives
    gets ``fallback`` (``threshold_fallbacks`` lists them with the reason).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method {method!r} is not one of {THRESHOLD_METHODS}")
    y_true, y_prob = metrics.check_arrays(y_true, y_prob, labels)
    pick = _f1_threshold if method == "f1" else _youden_threshold
    return {name: float(fallback) if metrics.undefined_reason(y_true[:, k])
            else pick(*metrics.known_pair(y_true[:, k], y_prob[:, k])) for k, name in enumerate(labels)}


def threshold_fallbacks(y_true, labels=LABELS):
    """{finding: reason} for findings where ``choose_thresholds`` had to fall back."""
    y_true = np.asarray(y_true)
    return {name: metrics.undefined_reason(y_true[:, k]) for k, name in enumerate(labels)
            if metrics.undefined_reason(y_true[:, k])}
