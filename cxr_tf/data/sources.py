"""The records a run trains or is evaluated on: one records folder, or several read as one
(``python -m cxr_tf.fit --records nih_records,chexpert_records``).

``Sources`` gives what training needs without caring how many folders there are: the label
set (common finding names, ``cxr_tf.data.harmonise``: the union of the folders' findings, or
a chosen list), the stored film size (the same in every folder), films and label prevalence
per split, and the ``tf.data`` pipeline (``cxr_tf.data.pipeline.make_dataset``), in which a
finding that a folder does not label is missing (-1) for its films, so the masked loss and
metrics leave it out. Training samples the folders in the proportions ``weights`` (default:
their training sizes, i.e. every film equally likely).

One NIH folder reads exactly as before: its labels are NIH's names, which are the common names.
"""

from pathlib import Path

import numpy as np

from cxr_tf.data.harmonise import common_labels, label_columns, merged_labels
from cxr_tf.data.manifest import common_image_size, manifest_labels, read_manifest


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


class Sources:
    """One or several records folders as one training source (module docstring).

    records: see ``records_list``; findings: the label set (common names) or None for the
    union; weights: sampling proportions of the folders in training (None: their sizes)."""

    def __init__(self, records, findings=None, weights=None):
        self.folders = records_list(records)
        self.manifests = [read_manifest(folder) for folder in self.folders]
        if len(self.folders) == 1 and findings is None:
            self.labels = common_labels(self.manifests[0])
        else:
            self.labels = merged_labels(self.manifests, findings)
        self.image_size = common_image_size(self.folders, self.manifests)
        if weights is not None and (len(weights) != len(self.folders) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"records_ratio {list(weights)}: give one non-negative proportion per records folder "
                             f"({len(self.folders)}), not all zero")
        self.weights = None if weights is None else [float(w) for w in weights]
        # the fast path: one folder whose labels are already the label set
        self._mapped = len(self.folders) > 1 or tuple(manifest_labels(self.manifests[0])) != tuple(self.labels)

    def __str__(self):
        return ",".join(str(f) for f in self.folders)

    @property
    def split_method(self):
        """The folders' split methods ("stratified", or e.g. "official+stratified"); None when no
        manifest names one."""
        methods = sorted({m["split_method"] for m in self.manifests if m.get("split_method")})
        return "+".join(methods) or None

    def num_examples(self, split):
        """Films in ``split`` over every folder (0 where a folder lacks the split)."""
        return sum(int(m["splits"].get(split, {}).get("num_examples", 0)) for m in self.manifests)

    def missing_split(self, split):
        """The first folder whose ``split`` is missing or empty, else None."""
        return next((f for f, m in zip(self.folders, self.manifests)
                     if int(m["splits"].get(split, {}).get("num_examples", 0)) <= 0), None)

    def prevalence(self, split="train"):
        """float32 (K,): per finding of ``labels``, positives / films where it is labelled, over
        every folder (0 where no film is labelled)."""
        positives, known = np.zeros(len(self.labels)), np.zeros(len(self.labels))
        for folder, manifest in zip(self.folders, self.manifests):
            info = manifest["splits"].get(split, {})
            total = int(info.get("num_examples", 0))
            own = manifest_labels(manifest)
            counts = info.get("label_counts", {})
            if total and any(label not in counts for label in own):
                raise ValueError(f"{folder / 'manifest.json'}: split {split!r} has no label_counts for some findings; "
                                 "rebuild the records")
            known_counts = info.get("label_known") or {}  # films whose label is not missing (older manifests: all)
            for j, column in enumerate(label_columns(manifest, self.labels)):
                if column >= 0:
                    positives[j] += counts.get(own[column], 0)
                    known[j] += known_counts.get(own[column], total)
        return (positives / np.maximum(known, 1)).astype(np.float32)

    def age_stats(self):
        """(mean, std) of the training films' ages over every folder (each folder's manifest
        ``metadata``, pooled by its training size): the metadata input's standardisation, the
        same for every folder. None when a folder's manifest lacks them."""
        stats = [(m.get("metadata") or {}, int(m["splits"].get("train", {}).get("num_examples", 0)))
                 for m in self.manifests]
        if any("age_mean" not in meta or "age_std" not in meta for meta, _ in stats):
            return None
        n = np.array([max(count, 1) for _, count in stats], np.float64)
        mean = np.array([meta["age_mean"] for meta, _ in stats], np.float64)
        std = np.array([meta["age_std"] for meta, _ in stats], np.float64)
        pooled = float((n * mean).sum() / n.sum())
        spread = float(np.sqrt((n * (std ** 2 + (mean - pooled) ** 2)).sum() / n.sum()))
        return pooled, (spread if spread > 0 else 1.0)

    def describe(self):
        """What the run's config.json records about its records (``metadata``: the age
        standardisation its metadata input was trained with, read back by predict)."""
        stats = self.age_stats()
        return {"records": str(self) if len(self.folders) > 1 else str(self.folders[0]),
                "records_datasets": [m.get("dataset", "nih") for m in self.manifests],
                "records_ratio": self.weights,
                "metadata": None if stats is None else {"age_mean": stats[0], "age_std": stats[1]}}

    def dataset(self, split, batch_size, **options):
        """``make_dataset`` over the folders (keyword ``options`` as there)."""
        from cxr_tf.data.pipeline import make_dataset  # noqa: PLC0415 (this module stays TensorFlow-free)

        return make_dataset(self.folders, split, batch_size, labels=self.labels if self._mapped else None,
                            weights=self.weights, age_stats=self.age_stats() if len(self.folders) > 1 else None,
                            **options)
