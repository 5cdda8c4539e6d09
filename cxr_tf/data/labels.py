"""NIH ChestX-ray14's 14 findings in NIH's order: the label set of NIH records (the default)
and the common names of those findings in ``cxr_tf/resources/findings.csv``. A records
folder's own label set is its manifest's ``labels``, a run's its ``labels.json``. ``No Finding``
is the all-zero vector."""

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
