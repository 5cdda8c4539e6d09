"""What a run has shown it can do, and what it may therefore claim.

A run earns the right to raise an alarm with its own numbers, its ``metrics.json``
as ``cxr_tf.runs.read_metrics`` reads it (``val`` and ``test`` blocks with
``macro_auc``, per-finding ``auc`` and, once ``python -m cxr_tf.evaluate`` has run,
``auc_ci``/``macro_auc_ci``). The rules
(``docs/triage.md``):

- the run is *validated* when its validation macro AUC reaches ``floor``
  (default ``DEFAULT_AUC_FLOOR`` = 0.70); otherwise, or when the run has no
  readable metrics at all, it is *unvalidated* and every result carries
  ``caveats`` saying why; an unvalidated run never says "urgent";
- a critical finding may make a film urgent only when its own validation AUC is
  defined and reaches ``floor`` (a finding the run cannot tell apart is never
  critical, whatever the macro says);
- a run of imported weights (``metrics.json`` ``training.imported``, written by
  ``python -m cxr_tf.import_weights``) is unvalidated until ``python -m cxr_tf.evaluate``
  has written a ``val`` block measured on the user's records (``source: "evaluate"``), and
  always carries the caveat that its source's training data may overlap the films.

Validation, not test, decides: the test split stays a report card the
decision never looked at. Both are exposed (``/api/model``).
"""

from cxr_tf.evaluation.literature import overlap_caveat

DEFAULT_AUC_FLOOR = 0.70
"""Validation AUC a run (macro) and a critical finding (its own) must reach."""


def _confidence_intervals(block):
    """({finding: [low, high] | None}, macro [low, high] | None) of one split block: present
    once ``python -m cxr_tf.evaluate`` has replaced fit's block (``cxr_tf.runs``)."""
    if not isinstance(block, dict):
        return {}, None
    per = block.get("auc_ci") if isinstance(block.get("auc_ci"), dict) else {}
    return per, block.get("macro_auc_ci")


def _split_numbers(block):
    """(macro AUC | None, {finding: AUC | None}) of one split block of metrics.json."""
    if not isinstance(block, dict):
        return None, {}
    macro = block.get("macro_auc")
    per = block.get("auc") if isinstance(block.get("auc"), dict) else {}
    return (float(macro) if isinstance(macro, (int, float)) else None,
            {f: (float(v) if isinstance(v, (int, float)) else None) for f, v in per.items()})


def _imported_name(imported):
    return " ".join(str(x) for x in (imported.get("source"), imported.get("weights_set") or imported.get("file")) if x)


def run_evidence(metrics, critical, floor=DEFAULT_AUC_FLOOR, split_method=None):
    """The run's evidence and status (JSON-ready).

    metrics: the run's metrics.json (``cxr_tf.runs.read_metrics``; None or {}: no evidence). critical: the
    configured critical findings. Returns {"status": "validated" | "unvalidated",
    "floor", "val_macro_auc", "test_macro_auc", "val_auc": {finding: AUC|None},
    "test_auc", "test_auc_ci": {finding: [low, high]} and "test_macro_auc_ci" (empty/None
    until the test split is evaluated), "split_method",
    "critical_allowed": [findings that may make a film urgent], "caveats": [sentences]}.
    """
    floor = float(floor)
    metrics = metrics or None
    test_block = (metrics or {}).get("test")
    val_macro, val_auc = _split_numbers((metrics or {}).get("val"))
    test_macro, test_auc = _split_numbers(test_block)
    caveats = []
    imported = ((metrics or {}).get("training") or {}).get("imported")
    evaluated = isinstance((metrics or {}).get("val"), dict) and metrics["val"].get("source") == "evaluate"
    if imported and not evaluated:
        # imported weights: their own numbers are the source's, on the source's data
        val_macro, val_auc = None, {}
        caveats.append(f"unvalidated model: imported weights ({_imported_name(imported)}) not validated on your data; "
                       "no film is called urgent until `python -m cxr_tf.evaluate --model RUN --records YOUR_RECORDS "
                       "--split val` has measured them")
    if imported:
        caveats.append(overlap_caveat(imported))
    if metrics is None:
        caveats.append("unvalidated model: the run has no metrics.json, so nothing shows it can tell findings "
                       "apart; no film is called urgent (train with `python -m cxr_tf.fit`, which writes it)")
    elif val_macro is None:
        if not imported:  # an imported run has said why above
            caveats.append("unvalidated model: metrics.json has no validation macro AUC; no film is called urgent")
    elif val_macro < floor:
        caveats.append(f"unvalidated model: validation macro AUC {val_macro:.3f} is below the floor {floor:.2f}"
                       f"{'' if test_macro is None else f' (test {test_macro:.3f})'}; "
                       "no film is called urgent, positives go to review")
    allowed = []
    for finding in critical:
        auc = val_auc.get(finding)
        if auc is not None and auc >= floor:
            allowed.append(finding)
        elif metrics is not None and val_macro is not None:
            why = "undefined (no positive or no negative validation film)" if auc is None else f"{auc:.3f}"
            caveats.append(f"{finding} is not treated as critical: its validation AUC is {why}, "
                           f"below the floor {floor:.2f}")
    validated = metrics is not None and val_macro is not None and val_macro >= floor and (evaluated or not imported)
    return {"status": "validated" if validated else "unvalidated", "floor": floor,
            "val_macro_auc": val_macro, "test_macro_auc": test_macro, "val_auc": val_auc, "test_auc": test_auc,
            "test_auc_ci": _confidence_intervals(test_block)[0], "test_macro_auc_ci": _confidence_intervals(test_block)[1],
            "split_method": split_method, "critical_allowed": allowed if validated else [],
            "caveats": caveats}
