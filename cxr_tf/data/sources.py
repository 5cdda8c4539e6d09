"""The records a run trains or is evaluated on: one records folder, or several read as one
(``python -m cxr_tf.fit --records nih_records,chexpert_records``).

``Sources`` gives what training needs without caring how many folders there are: the label
set (common finding names, ``cxr_tf.data.harmonise``: the union of the folders' findings, or
a chosen list), the stored film size (the same in every folder), films and label prevalence
per split. ``cxr_tf.data.pipeline.make_dataset(sources, ...)`` reads them as one ``tf.data``
pipeline, in which a finding that a folder does not label is missing (-1) for its films, so
the masked loss and metrics leave it out. Training samples the folders in the proportions
``weights`` (default: their training sizes, i.e. every film equally likely).

The rules for what may be asked of records live here, once: ``check_ratio`` (the folders'
proportions: config, command line, ``Sources``) and ``check_image_size`` (no film larger than
the records store: fit, the pipeline, verification).

One NIH folder reads exactly as before: its labels are NIH's names, which are the common names.
"""

from pathlib import Path

import numpy as np

from cxr_tf.data import manifest
from cxr_tf.data.harmonise import common_labels, label_columns, merged_labels


def records_list(records):
    """The records folders (list of Path) of a ``records`` setting: a path, a comma-separated
    string of paths, or a list of them."""
    items = records if isinstance(records, (list, tuple)) else str(records).split(",")
    folders = [Path(str(item).strip()).expanduser().resolve() for item in items if str(item).strip()]
    if not folders:
        raise ValueError(f"records={records!r}: give one records folder or several, comma-separated")
    if len(set(folders)) != len(folders):
        raise ValueError(f"records={records!r}: a records folder is named twice")
    return folders


def check_ratio(ratio, folders=None, what="records_ratio"):
    """The sampling proportions of records folders as a list of floats: ``ratio`` (numbers, or
    one comma-separated string), each non-negative, not all zero, one per folder when the
    number of ``folders`` is known. ValueError starting with ``what`` (the setting's name)."""
    numbers = ratio.split(",") if isinstance(ratio, str) else ratio
    try:
        numbers = [float(v) for v in numbers]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or min(numbers) < 0 or sum(numbers) <= 0 or (folders is not None and len(numbers) != folders):
        count = f" ({folders})" if folders is not None else " (e.g. [1, 1])"
        raise ValueError(f"{what}={ratio!r}: give one non-negative proportion per records folder{count}, "
                         "not all zero")
    return numbers


def check_image_size(image_size, stored, records):
    """ValueError when films of ``image_size`` px are asked of records that store ``stored`` px
    (``records``: the folder(s), for the message): upsampling adds no detail."""
    if int(image_size) > int(stored):
        raise ValueError(f"image_size={image_size} is larger than the {stored} px stored in {records}: upsampling "
                         f"adds no detail; pass --image-size {stored} or less, or rebuild the records with "
                         f"--image-size {image_size}")


class Sources:
    """One or several records folders as one training source (module docstring).

    records: see ``records_list``; findings: the label set (common names) or None for the
    union; weights: sampling proportions of the folders in training (None: their sizes).
    Attributes: folders, manifests (each folder's ``cxr_tf.data.manifest.Manifest``), labels,
    image_size, weights, and mapped: False when one folder's own labels, in its order, are the
    label set (read as stored), True when each folder's labels are mapped to it."""

    def __init__(self, records, findings=None, weights=None):
        self.folders = records_list(records)
        self.manifests = [manifest.read(folder) for folder in self.folders]
        if len(self.folders) == 1 and findings is None:
            self.labels = common_labels(self.manifests[0])
        else:
            self.labels = merged_labels(self.manifests, findings)
        self.image_size = manifest.common_image_size(self.folders, self.manifests)
        self.weights = None if weights is None else check_ratio(weights, len(self.folders))
        # False (the fast path): one folder whose labels, in its own order, are the label set
        self.mapped = len(self.folders) > 1 or common_labels(self.manifests[0]) != tuple(self.labels)

    def __str__(self):
        return ",".join(str(f) for f in self.folders)

    @property
    def split_method(self):
        """The folders' split methods ("stratified", or e.g. "official+stratified"); None when no
        manifest names one."""
        methods = sorted({m.split_method for m in self.manifests if m.split_method})
        return "+".join(methods) or None

    @property
    def datasets(self):
        """The release (adapter name) of each folder, in order."""
        return [m.dataset for m in self.manifests]

    def num_examples(self, split):
        """Films in ``split`` over every folder (0 where a folder lacks the split)."""
        return sum(m.splits[split].count for m in self.manifests if split in m.splits)

    def missing_split(self, split):
        """The first folder whose ``split`` is missing or empty, else None."""
        return next((f for f, m in zip(self.folders, self.manifests)
                     if split not in m.splits or m.splits[split].count <= 0), None)

    def prevalence(self, split="train"):
        """float32 (K,): per finding of ``labels``, positives / films where it is labelled, over
        every folder (0 where no film is labelled)."""
        positives, known = np.zeros(len(self.labels)), np.zeros(len(self.labels))
        for folder, m in zip(self.folders, self.manifests):
            if split not in m.splits:
                continue
            info = m.splits[split]
            if info.count and any(label not in info.label_counts for label in m.labels):
                raise ValueError(f"{manifest.path(folder)}: split {split!r} has no label_counts for some findings; "
                                 "rebuild the records")
            for j, column in enumerate(label_columns(m, self.labels)):
                if column >= 0:
                    positives[j] += info.label_counts.get(m.labels[column], 0)
                    known[j] += info.known(m.labels[column])
        return (positives / np.maximum(known, 1)).astype(np.float32)

    def age_stats(self):
        """(mean, std) of the training films' ages over every folder (each folder's manifest
        ``metadata``, pooled by its training size): the metadata input's standardisation, the
        same for every folder. None when a folder's manifest lacks them."""
        if any(m.age_mean is None or m.age_std is None for m in self.manifests):
            return None
        n = np.array([max(m.splits["train"].count if "train" in m.splits else 0, 1) for m in self.manifests],
                     np.float64)
        mean = np.array([m.age_mean for m in self.manifests], np.float64)
        std = np.array([m.age_std for m in self.manifests], np.float64)
        pooled = float((n * mean).sum() / n.sum())
        spread = float(np.sqrt((n * (std ** 2 + (mean - pooled) ** 2)).sum() / n.sum()))
        return pooled, (spread if spread > 0 else 1.0)

    def describe(self):
        """What the run's config.json records about its records (``metadata``: the age
        standardisation its metadata input was trained with, read back by predict)."""
        stats = self.age_stats()
        return {"records": str(self) if len(self.folders) > 1 else str(self.folders[0]),
                "records_datasets": self.datasets,
                "records_ratio": self.weights,
                "metadata": None if stats is None else {"age_mean": stats[0], "age_std": stats[1]}}
