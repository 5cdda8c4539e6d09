"""The records manifest (``manifest.json`` beside the shards): the one reader and writer.

Keys: ``format_version``, ``labels`` (the label set, in output order), ``image_size``,
``splits`` (per split: ``num_examples``, ``num_patients``, ``label_counts``, ``shards``), and
what the builder records (seed, split method, skipped files, metadata, warnings, build).
A manifest without ``format_version`` (written before it existed) reads as version 1.
"""

import json
from pathlib import Path

from cxr_tf.data.jsonfile import write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
"""2: ``format_version`` recorded; 1: older manifests (same keys otherwise)."""
BUILD_HINT = "build them with `python -m cxr_tf.build --out DIR` (or tools/build_tfrecords.py)"
_BUILD_HINT = BUILD_HINT


def read_manifest(records_dir):
    """The ``manifest.json`` of a records folder as a dict.

    FileNotFoundError when the folder or its manifest is missing; ValueError when
    the manifest is not JSON or lacks the keys ``labels``, ``image_size``, ``splits``.
    """
    records_dir = Path(records_dir)
    path = records_dir / MANIFEST
    if not records_dir.is_dir():
        raise FileNotFoundError(f"records folder {records_dir} does not exist; {_BUILD_HINT}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {records_dir} is not a records folder "
                                f"(no manifest.json beside the shards); {_BUILD_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rebuild the records") from err
    missing = [key for key in ("labels", "image_size", "splits") if key not in manifest]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}; rebuild the records")
    manifest.setdefault("format_version", 1)
    return manifest


def manifest_labels(manifest):
    """The records' label set (tuple of finding names, the order of every label vector)."""
    return tuple(manifest["labels"])


def common_image_size(folders, manifests):
    """The film size (pixels) stored in every one of several records folders; ValueError naming
    the folders when their sizes differ (they cannot be read as one)."""
    sizes = {int(m["image_size"]) for m in manifests}
    if len(sizes) > 1:
        raise ValueError(f"the records folders {[str(f) for f in folders]} store films of different sizes "
                         f"{sorted(sizes)} px; build them with the same --image-size")
    return sizes.pop()


def write_manifest(records_dir, manifest):
    """Write ``manifest`` (a dict) atomically as ``records_dir/manifest.json`` with the current
    ``format_version``; returns the path."""
    return write_json(Path(records_dir) / MANIFEST, {"format_version": FORMAT_VERSION, **manifest})
