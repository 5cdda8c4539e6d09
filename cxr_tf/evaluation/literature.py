"""Published per-finding ROC-AUCs on ChestX-ray14, shipped with the package
(``cxr_tf/resources/literature_auc.csv``), and our results printed beside them.

The table: one row per published model with ``model``, ``source``, ``split`` (how
the source evaluated, where it says so), the 14 findings in ``LABELS`` order and
``macro`` (empty where the source gives none or contradicts itself). Results on
different splits (official NIH test list, random patient-wise, iterative
stratification) are not directly comparable; every comparison names both splits.
"""

from importlib import resources

import numpy as np
import pandas as pd

from cxr_tf.data.labels import LABELS

RESOURCE = "literature_auc.csv"
SPLIT_NAMES = {
    "official": "official NIH test list",
    "stratified": "patient-grouped iterative stratification",
    "imported": "the split of the imported weights' source (not cxr_tf's; which films it trained on is unknown)",
}
COMPARABILITY_NOTE = (
    "Results on the official NIH test list and on a stratified (or random patient-wise) split are "
    "not comparable: the test sets hold different patients with a different mix of findings and "
    "follow-up films, so a difference in AUC between rows of different splits is not a difference "
    "between models. Compare only rows evaluated on the same kind of split."
)
SHORT_NAMES = dict(zip(LABELS, ("Atel", "Card", "Effu", "Infi", "Mass", "Nodu", "Pneu", "Ptx", "Cons",
                                "Edem", "Emph", "Fibr", "PlTh", "Hern")))


def load_literature():
    """The published results as a DataFrame: model, source, split, 14 finding
    columns and macro (float, NaN where not reported)."""
    with resources.files("cxr_tf").joinpath("resources", RESOURCE).open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle)
    expected = ["model", "source", "split", *LABELS, "macro"]
    if list(table.columns) != expected:
        raise ValueError(f"cxr_tf/resources/{RESOURCE}: columns {list(table.columns)}, expected {expected}")
    table[[*LABELS, "macro"]] = table[[*LABELS, "macro"]].astype(np.float64)
    return table


def describe_split(split_method):
    """Readable name of our split method ('official', 'stratified' or free text)."""
    if not split_method:
        return "unknown split"
    return SPLIT_NAMES.get(str(split_method), str(split_method))


def comparison_table(our_aucs, our_macro=None, our_name="this model", split_method=None, literature=None):
    """Ours (first row) and every published row: columns model, split, 14 findings,
    macro. our_aucs: {finding: float or None}; None (undefined) stays NaN."""
    literature = load_literature() if literature is None else literature
    ours = {"model": our_name, "split": f"ours: {describe_split(split_method)}"}
    ours.update({name: np.nan if our_aucs.get(name) is None else float(our_aucs[name]) for name in LABELS})
    ours["macro"] = np.nan if our_macro is None else float(our_macro)
    rows = pd.concat([pd.DataFrame([ours]), literature[["model", "split", *LABELS, "macro"]]],
                     ignore_index=True)
    return rows


def format_comparison(table, digits=3):
    """Plain-text table for the terminal: one row per model (ours first), findings
    as abbreviated columns (legend underneath), then each row's split."""
    body = table.set_index("model")[[*LABELS, "macro"]].rename(columns=SHORT_NAMES)
    text = body.to_string(float_format=lambda v: f"{v:.{digits}f}", na_rep="-")
    legend = ", ".join(f"{short}={name}" for name, short in SHORT_NAMES.items())
    splits = "\n".join(f"  {m}: {s}" for m, s in zip(table["model"], table["split"]))
    return f"{text}\n({legend})\n\nsplits:\n{splits}\n{COMPARABILITY_NOTE}"


def overlap_caveat(imported, datasets=()):
    """The sentence every result and report of an imported run carries: its source's training data
    may hold the films it is now shown. ``imported``: the provenance (config.json ``imported`` or
    metrics.json ``training.imported``); ``datasets``: the records' dataset names, when known."""
    trained = imported.get("trained_on") or "data the source does not name"
    split = imported.get("split") or "a split it does not describe"
    shared = sorted(set(datasets) & set(imported.get("datasets") or ()))
    text = (f"imported weights trained by {imported.get('source') or 'another project'} on {trained} ({split}): "
            "a film from those datasets may have been in its training set, so results and AUCs on such films may "
            "be optimistic")
    if shared:
        text += f"; these records are from {', '.join(shared)}, which it was trained on: read their AUCs as an upper bound"
    return text
