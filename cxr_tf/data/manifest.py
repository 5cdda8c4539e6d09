"""The records manifest: what a records folder holds, written beside its shards.

This module is the only one that knows the file's name and its keys. Everyone else reads
the fields of ``Manifest`` by name::

    from cxr_tf.data import manifest

    m = manifest.read("records")        # FileNotFoundError / ValueError naming the file and the fix
    m.labels, m.image_size, m.splits["train"].count, m.splits["train"].shards, m.age_stats()
    manifest.exists("records")          # a records folder?
    manifest.write("records", m)        # atomic; the builder and the synthetic records call it

On disk (JSON, ``format_version`` 2): ``format_version``, ``dataset``, ``labels``,
``harmonised``, ``options``, ``image_size``, ``splits`` (per split: ``num_examples``,
``num_patients``, ``label_counts``, ``label_known``, ``shards``), ``seed``, ``split_method``,
``val_fraction``, ``test_fraction``, ``label_table``, ``label_table_sha256``, ``data_dir``,
``skipped``, ``rows_without_files``, ``excluded``, ``metadata`` (``age_mean``, ``age_std``),
``warnings``, ``build``. Only ``labels``, ``image_size`` and ``splits`` are required; older
manifests lack some of the others and read with their defaults (no ``format_version``:
version 1; no ``dataset``: NIH, the only release then).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxr_tf.data.jsonfile import write_json

_FILE = "manifest.json"
FORMAT_VERSION = 2
"""2: ``format_version`` recorded; 1: older manifests (same keys otherwise)."""
BUILD_HINT = "build them with `python -m cxr_tf.build --out DIR` (or tools/build_tfrecords.py)"


@dataclass(frozen=True)
class Split:
    """One split of a records folder.

    count: films (``num_examples``); patients: distinct patients; label_counts: {label:
    positive films}; label_known: {label: films whose label is not missing}, None in manifests
    written before missing labels existed (every label known); shards: its shard file names,
    in reading order."""

    count: int
    patients: int = 0
    label_counts: dict = field(default_factory=dict)
    label_known: dict | None = None
    shards: tuple = ()

    def known(self, label):
        """Films of this split whose ``label`` is not missing."""
        return self.count if self.label_known is None else self.label_known.get(label, self.count)


@dataclass(frozen=True)
class Manifest:
    """What a records folder holds (the module docstring lists the file's keys).

    labels: the records' label set, the order of every label vector (the release's own names);
    image_size: side of the stored square films (pixels); splits: {name: Split}; dataset: the
    release's adapter (``cxr_tf.data.datasets``); harmonised: {own name: common name}
    (``cxr_tf.data.harmonise``; empty: every label is its own common name); options: what the
    adapter applied; age_mean / age_std: the training films' ages (the metadata input's
    standardisation), None when not recorded; the rest records how the build ran."""

    labels: tuple
    image_size: int
    splits: dict
    dataset: str = "nih"
    harmonised: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    seed: int | None = None
    split_method: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    label_table: str | None = None
    label_table_sha256: str | None = None
    data_dir: str | None = None
    skipped: list = field(default_factory=list)
    rows_without_files: dict | None = None
    excluded: dict = field(default_factory=dict)
    age_mean: float | None = None
    age_std: float | None = None
    warnings: list = field(default_factory=list)
    build: dict | None = None
    format_version: int = FORMAT_VERSION

    def age_stats(self):
        """(mean, std) of the training films' ages, the metadata input's standardisation (a
        zero std reads as 1). ValueError when the manifest does not record them."""
        if self.age_mean is None or self.age_std is None:
            raise ValueError("manifest has no metadata.age_mean / metadata.age_std (training-split age "
                             "statistics, needed for the multimodal input); rebuild the records")
        std = float(self.age_std)
        return float(self.age_mean), (std if std > 0 else 1.0)

    def to_json(self):
        """The manifest as the JSON object written to disk (keys in the builder's order; fields
        that are None left out)."""
        splits = {name: {"num_examples": s.count, "num_patients": s.patients, "label_counts": s.label_counts,
                         "label_known": s.label_known, "shards": list(s.shards)}
                  for name, s in self.splits.items()}
        splits = {name: {k: v for k, v in s.items() if v is not None} for name, s in splits.items()}
        metadata = None if self.age_mean is None else {"age_mean": self.age_mean, "age_std": self.age_std}
        data = {"format_version": self.format_version, "dataset": self.dataset, "labels": list(self.labels),
                "harmonised": self.harmonised, "options": self.options, "image_size": self.image_size,
                "splits": splits, "seed": self.seed, "split_method": self.split_method,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "label_table": self.label_table, "label_table_sha256": self.label_table_sha256,
                "data_dir": self.data_dir, "skipped": self.skipped, "rows_without_files": self.rows_without_files,
                "excluded": self.excluded, "metadata": metadata, "warnings": self.warnings, "build": self.build}
        return {key: value for key, value in data.items() if value is not None}


def path(folder):
    """Where a records folder keeps its manifest (for messages naming the file)."""
    return Path(folder) / _FILE


def exists(folder):
    """True when ``folder`` is a records folder (holds a manifest)."""
    return path(folder).is_file()


def read(folder):
    """The manifest of records folder ``folder`` (a ``Manifest``).

    FileNotFoundError when the folder or its manifest is missing; ValueError naming the file
    when the manifest is not JSON, lacks ``labels``, ``image_size`` or ``splits``, or a value
    has the wrong type."""
    folder = Path(folder)
    file = path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"records folder {folder} does not exist; {BUILD_HINT}")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {folder} is not a records folder "
                                f"(no {_FILE} beside the shards); {BUILD_HINT}")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); rebuild the records") from err
    missing = [key for key in ("labels", "image_size", "splits") if key not in data]
    if missing:
        raise ValueError(f"{file} lacks the key(s) {missing}; rebuild the records")
    try:
        return _from_json(data)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{file}: a value does not have the expected type ({err}); rebuild the records") from None


def _from_json(data):
    splits = {name: Split(count=int(s.get("num_examples", 0)), patients=int(s.get("num_patients", 0)),
                          label_counts=dict(s.get("label_counts") or {}), label_known=s.get("label_known"),
                          # shards were once {"name": ...} objects
                          shards=tuple(n["name"] if isinstance(n, dict) else n for n in s.get("shards", [])))
              for name, s in data["splits"].items()}
    metadata = data.get("metadata") or {}
    optional = {key: data[key] for key in ("seed", "split_method", "val_fraction", "test_fraction", "label_table",
                                           "label_table_sha256", "data_dir", "rows_without_files", "build")
                if key in data}
    return Manifest(labels=tuple(data["labels"]), image_size=int(data["image_size"]), splits=splits,
                    dataset=data.get("dataset") or "nih", harmonised=dict(data.get("harmonised") or {}),
                    options=dict(data.get("options") or {}), skipped=list(data.get("skipped") or []),
                    excluded=dict(data.get("excluded") or {}), warnings=list(data.get("warnings") or []),
                    age_mean=metadata.get("age_mean"), age_std=metadata.get("age_std"),
                    format_version=int(data.get("format_version", 1)), **optional)


def write(folder, manifest):
    """Write ``manifest`` (a ``Manifest``) atomically into records folder ``folder`` with the
    current format version; returns the file's path."""
    data = manifest.to_json()
    data["format_version"] = FORMAT_VERSION
    return write_json(path(folder), data)


def remove(folder):
    """Delete a records folder's manifest, if any (a build replacing the folder's records)."""
    path(folder).unlink(missing_ok=True)


def common_image_size(folders, manifests):
    """The film size (pixels) stored in every one of several records folders; ValueError naming
    the folders when their sizes differ (they cannot be read as one)."""
    sizes = {m.image_size for m in manifests}
    if len(sizes) > 1:
        raise ValueError(f"the records folders {[str(f) for f in folders]} store films of different sizes "
                         f"{sorted(sizes)} px; build them with the same --image-size")
    return sizes.pop()

