"""The TFRecord schema, defined once: the writer (`serialize_example`) and the
parser (`parse_example`) sit side by side so they cannot drift.

One example is one film:

========== ======== ==========================================================
feature    type     meaning
========== ======== ==========================================================
image      bytes    PNG, 8-bit greyscale, square, the manifest's ``image_size``
labels     int64×K  in the manifest's ``labels`` order (K = 14 for NIH): 1 positive,
                    0 negative, -1 missing (not labelled, not mentioned, or uncertain under
                    the ``ignore`` policy: ``cxr_tf.data.datasets.base.MISSING``)
image_index bytes   the film's identity in its release (NIH: ``00000001_000.png``)
patient_id int64    the release's patient id (a hash of it when it is not a number:
                    ``cxr_tf.data.datasets.base.patient_number``)
age        int64    years, -1 unknown
sex        bytes    ``M``, ``F`` or empty (unknown)
view       bytes    ``PA``, ``AP``, ``LATERAL``, ``LL`` or empty (unknown)
follow_up  int64    NIH follow-up number (0 where the release has none)
========== ======== ==========================================================

Shards are named ``{split}-{i:05d}-of-{n:05d}.tfrecord`` (``shard_name``), and
``parse_shard_name`` reads the three parts back.
"""

import re

import tensorflow as tf

from cxr_tf.data.labels import NUM_LABELS


def features(num_labels=NUM_LABELS):
    """The feature spec of an example whose label vector has ``num_labels`` entries."""
    return {**FEATURES, "labels": tf.io.FixedLenFeature([int(num_labels)], tf.int64)}


FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([NUM_LABELS], tf.int64),
    "image_index": tf.io.FixedLenFeature([], tf.string),
    "patient_id": tf.io.FixedLenFeature([], tf.int64),
    "age": tf.io.FixedLenFeature([], tf.int64),
    "sex": tf.io.FixedLenFeature([], tf.string),
    "view": tf.io.FixedLenFeature([], tf.string),
    "follow_up": tf.io.FixedLenFeature([], tf.int64),
}

_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def serialize_example(png, labels, image_index, patient_id, age, sex, view, follow_up):
    """One film as a serialized ``tf.train.Example`` (bytes).

    png: PNG bytes of the square 8-bit greyscale film; labels: K ints in {1, 0, -1 missing},
    in the records' label order.
    """
    if len(labels) == 0:
        raise ValueError(f"{image_index}: no labels")
    feature = {
        "image": _bytes(png),
        "labels": _ints(labels),
        "image_index": _bytes(image_index.encode()),
        "patient_id": _ints([patient_id]),
        "age": _ints([age]),
        "sex": _bytes(sex.encode()),
        "view": _bytes(view.encode()),
        "follow_up": _ints([follow_up]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized, num_labels=NUM_LABELS):
    """Parse one serialized example (a scalar string tensor) into a dict of tensors
    with the ``FEATURES`` keys; the image stays PNG bytes (decode it where needed).
    num_labels: the length of the records' label set (``len(manifest["labels"])``)."""
    return tf.io.parse_single_example(serialized, features(num_labels))


def shard_name(split, index, count):
    """``train-00003-of-00016.tfrecord`` for split ``train``, index 3 of 16."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def parse_shard_name(name):
    """(split, index, count) from a shard file name; ValueError for any other name."""
    match = _SHARD_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a shard name of the form split-00000-of-00001.tfrecord")
    return match["split"], int(match["index"]), int(match["count"])
