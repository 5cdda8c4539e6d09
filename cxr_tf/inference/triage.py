"""Triage rules: from per-finding probabilities and uncertainty to a level, an action
and a message a reader can act on.

A finding is *borderline* when its mean probability lies within ``borderline_k``
Monte-Carlo standard deviations of its threshold (|p − t| < k·std; k defaults to
``DEFAULT_BORDERLINE_K`` = 2, about a 95 % band); *positive* when its mean reaches
its threshold (the run's validation-chosen ``thresholds.json``) and it is not
borderline; *uncertain* when its standard deviation reaches ``uncertainty_threshold``.
A critical finding can make a film urgent only when the run's evidence allows it
(``cxr_tf.inference.evidence``: the run is validated and the finding's own
validation AUC reaches the floor). Then, first rule that applies:

========= ====================================================================
urgent    an allowed critical finding is positive and certain
review    a critical finding is positive but not allowed (unvalidated run, or
          its own AUC under the floor), borderline or uncertain ("possible …");
          or any finding is positive, borderline or uncertain
routine   nothing positive, borderline or uncertain: the only case that says
          "no finding"
========= ====================================================================

Critical findings default to ``("Pneumothorax",)``: it is the time-critical
finding on a chest film (a tension pneumothorax needs decompression within
minutes, and the film is often where it is first seen) and the established target
of chest X-ray triage tools. Pneumonia and Edema are acute too, but Pneumonia has
the weakest published AUCs of all 14 labels (0.66–0.78, literature_auc.csv) and
Edema is rarely news to the clinician of a breathless patient: as "urgent" they
would mostly add false alarms, and a positive one still reaches the worklist as
"review". Add them with ``critical=("Pneumothorax", "Pneumonia", "Edema")``
(``--critical`` on the command line).

An uncertain critical finding is *review*, not *urgent*, as the rules above say,
but it sorts first among the reviews and its message names the possible critical
finding, so it is read next.
"""

from cxr_tf.data.labels import LABELS

DEFAULT_CRITICAL = ("Pneumothorax",)
DEFAULT_BORDERLINE_K = 2.0
"""A finding with |mean − threshold| < k × MC std is borderline (review, never urgent)."""
DEFAULT_UNCERTAINTY_THRESHOLD = 0.1
"""Standard deviation of the MC-dropout probability at which a finding counts as
uncertain. 0.1 is a starting point (a 0.5-dropout head on a well-trained model
rarely exceeds ~0.05 away from the decision boundary); calibrate it on the
validation split, e.g. the 95th percentile of the per-film maximum std."""

URGENT, REVIEW, ROUTINE = "urgent", "review", "routine"
LEVELS = (URGENT, REVIEW, ROUTINE)
"""Triage levels, most urgent first."""

ACTIONS = {
    URGENT: "Immediate radiologist read; notify the responsible clinician now.",
    REVIEW: "Radiologist review in the normal reporting queue, ahead of routine films.",
    ROUTINE: "Routine reporting; the model flags nothing on this film.",
}
UNSURE_MESSAGE = "findings present, unable to classify with confidence — needs review"
NO_FINDING_MESSAGE = "no finding"


def validate_critical(critical, labels=LABELS):
    """The critical findings as a tuple; ValueError naming any finding not in ``labels`` (the
    run's label set)."""
    critical = tuple(critical)
    unknown = [c for c in critical if c not in labels]
    if unknown:
        raise ValueError(f"unknown critical finding(s) {unknown}; choose from {list(labels)}")
    return critical


def triage(probabilities, uncertainty, thresholds, critical=DEFAULT_CRITICAL,
           uncertainty_threshold=DEFAULT_UNCERTAINTY_THRESHOLD, borderline_k=DEFAULT_BORDERLINE_K, evidence=None):
    """Triage one film.

    probabilities, uncertainty, thresholds: {finding: float} over the run's label set
    (mean probability 0..1, MC std 0..0.5, decision threshold 0..1). borderline_k:
    the band |p − t| < k·std is borderline. evidence: the run's
    ``cxr_tf.inference.evidence.run_evidence`` (None: the caller vouches for the
    run, every critical finding may alarm). Returns {"findings": [positive
    findings, most probable first], "borderline": [findings within the band],
    "triage": {"level", "action"}, "message": str, "caveats": [str]}.
    """
    labels = tuple(probabilities)
    critical = validate_critical(critical, labels)
    if borderline_k < 0:
        raise ValueError(f"borderline_k={borderline_k}: expected a non-negative number of standard deviations")
    allowed = critical if evidence is None else tuple(c for c in critical if c in evidence["critical_allowed"])
    caveats = [] if evidence is None else list(evidence["caveats"])
    borderline = sorted((f for f in labels
                         if abs(probabilities[f] - thresholds[f]) < borderline_k * uncertainty[f]),
                        key=lambda f: -probabilities[f])
    positive = sorted((f for f in labels if probabilities[f] >= thresholds[f] and f not in borderline),
                      key=lambda f: -probabilities[f])
    uncertain = [f for f in labels if uncertainty[f] >= uncertainty_threshold]
    critical_pos = [f for f in positive if f in critical]
    sure_critical = [f for f in critical_pos if f not in uncertain and f in allowed]
    shaky_critical = [f for f in critical_pos if f in uncertain] + [f for f in borderline if f in critical]
    if sure_critical:
        level = URGENT
        message = "critical finding: " + _listing(sure_critical, probabilities)
        others = [f for f in positive if f not in sure_critical]
        if others:
            message += "; also " + _listing(others, probabilities)
    elif shaky_critical:
        level = REVIEW
        message = (f"possible {_listing(shaky_critical, probabilities)} (critical) — "
                   "unable to classify with confidence — needs review")
    elif critical_pos:  # positive and certain, but the run has not earned the alarm
        level = REVIEW
        message = (f"findings: {_listing(positive, probabilities)} — not urgent: the model has not shown it "
                   f"can detect {', '.join(critical_pos)} (see caveats) — needs review")
    elif uncertain:
        level, message = REVIEW, UNSURE_MESSAGE
    elif positive or borderline:
        level = REVIEW
        message = "; ".join(part for part in (
            positive and "findings: " + _listing(positive, probabilities),
            borderline and "borderline: " + _listing(borderline, probabilities)) if part)
    else:
        level, message = ROUTINE, NO_FINDING_MESSAGE
    if borderline and level != ROUTINE and "borderline" not in message:
        message += "; borderline: " + _listing(borderline, probabilities)
    return {"findings": positive, "borderline": borderline,
            "triage": {"level": level, "action": ACTIONS[level]}, "message": message, "caveats": caveats}


def _listing(findings, probabilities):
    return ", ".join(f"{f} ({probabilities[f]:.2f})" for f in findings)


def urgency_key(result, critical=DEFAULT_CRITICAL):
    """Sort key of one result (a predict dict or an error dict), most urgent smallest.

    Order: urgent; review with a possible critical finding; other reviews; failed
    files (a person must look at them, the model could not); routine. Within a
    group, the higher the largest critical probability, then the largest probability,
    the earlier.
    """
    if "error" in result:
        return (3, 0.0, 0.0, result.get("file", ""))
    probs = result["probabilities"]
    level = result["triage"]["level"]
    top_critical = max((probs[f] for f in critical if f in probs), default=0.0)
    if level == URGENT:
        group = 0
    elif level == REVIEW:
        flagged = result["findings"] + result.get("borderline", [])
        group = 1 if any(f in critical for f in flagged) else 2
    else:
        group = 4
    return (group, -top_critical, -max(probs.values(), default=0.0), result["file"])


def worklist(results, critical=DEFAULT_CRITICAL):
    """``results`` sorted most urgent first (a new list; see ``urgency_key``)."""
    return sorted(results, key=lambda r: urgency_key(r, critical))
