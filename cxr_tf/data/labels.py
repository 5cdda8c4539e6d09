"""NIH ChestX-ray14's 14 findings in NIH's order: the label set of NIH records (the default)
and the common names of those findings in ``cxr_tf/resources/findings.csv``. A records
folder's own label set is its manifest's ``labels``, a run's its ``labels.json``. ``No Finding``
is the all-zero vector. ``check_findings`` is the one rule for a chosen label set (``--findings``
of build and fit)."""

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_LABELS = len(LABELS)
NO_FINDING = "No Finding"

META_NAMES = ("age_standardised", "sex_M", "sex_F", "view_PA", "view_AP")
"""The multimodal model's ``meta`` input, in this order (built by ``cxr_tf.data.pipeline.meta_vector``)."""
META_DIM = len(META_NAMES)


def check_findings(findings, available=None, where="the records"):
    """A chosen label set as a tuple of names: ``findings`` (a list of names, or one
    comma-separated string) with at least one name and no repeats, each one of ``available``
    when given (``where``: what labels those, for the message). ValueError saying what to give
    and naming the names that ``available`` lacks."""
    names = [n.strip() for n in findings.split(",") if n.strip()] if isinstance(findings, str) else findings
    if (not isinstance(names, (list, tuple)) or not names or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n.strip() for n in names)):
        choices = f" labelled by {where} ({', '.join(available)})" if available is not None else ""
        raise ValueError(f"findings {findings!r}: give one or more distinct finding names{choices}")
    unknown = [n for n in names if available is not None and n not in available]
    if unknown:
        raise ValueError(f"findings {list(names)}: give distinct names labelled by {where} "
                         f"({', '.join(available)}); none labels {', '.join(unknown)}")
    return tuple(names)
