"""Checking records for damage: ``verify_records`` reads every record of a records folder and
names the shard and record of the first damaged one; ``locate_damage`` turns an error that
TensorFlow raised while reading records (which names a byte offset, not a file) into such a
``RecordsError``. ``fit`` and ``evaluate`` call it when their input pipeline fails."""

import re

import tensorflow as tf

from cxr_tf.data import manifest
from cxr_tf.data.pipeline import check_request
from cxr_tf.data.records import parse_example


class RecordsError(ValueError):
    """Damaged records: the message names the shard, the record and the fix."""


def verify_records(records_dir, split=None, image_size=None, decode=True):
    """Read every record of ``split`` (all splits when None) and decode its film.

    Returns {split: number of examples}. Raises RecordsError (a ValueError) naming the
    shard, the record number (0-based, in the shard) and, when that record itself
    was readable, its image, for the first corrupt record: a TFRecord CRC failure or
    truncation, an undecodable example, a PNG that does not decode or is not the
    manifest's size; and when a split's count disagrees with the manifest.
    decode=False checks the TFRecord framing and CRCs only (fast: no PNG decoding).
    Slow with decode (decodes everything): run it after copying records around,
    or when the pipeline stops with an error that does not name the shard.
    """
    records = manifest.read(records_dir)
    splits = [split] if split is not None else sorted(records.splits)
    num_labels = len(records.labels)
    counts = {}
    for name in splits:
        files, stored = check_request(records, records_dir, name, image_size or records.image_size)
        total = 0
        for path in files:
            position, image_index = 0, None  # position: 0-based number of the record being read
            try:
                for record in tf.data.TFRecordDataset(path):
                    if decode:
                        ex = parse_example(record, num_labels)
                        image_index = ex["image_index"].numpy().decode(errors="replace")
                        image = tf.io.decode_png(ex["image"], channels=1)
                        if tuple(image.shape) != (stored, stored, 1):
                            raise ValueError(f"image is {tuple(image.shape)}, the manifest says {stored} px")
                        if ex["labels"].shape != (num_labels,):
                            raise ValueError(f"labels have shape {tuple(ex['labels'].shape)}")
                    total += 1
                    position += 1
                    image_index = None  # the next record's name is unknown until it is read
            except (tf.errors.OpError, ValueError) as err:
                reason = _tf_reason(err)
                which = f"image {image_index}" if image_index else "its image unreadable"
                raise RecordsError(f"corrupt record in shard {path}: record {position} ({which}): "
                                   f"{reason}; {position} intact record(s) before it; "
                                   f"rebuild that shard with tools/build_tfrecords.py") from err
        expected = records.splits[name].count
        if total != expected:
            raise RecordsError(f"split {name!r} in {records_dir}: read {total} records, manifest says {expected}")
        counts[name] = total
    return counts


def _tf_reason(err):
    """The first line of a TensorFlow error without its graph-node and op decorations."""
    text = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()


def locate_damage(records, err, splits=None):
    """A RecordsError naming the shard and first damaged record behind ``err`` (an error
    TensorFlow raised while reading ``records``, a records folder or a list of them:
    ``DataLossError: corrupted record at <byte offset>`` names no file), or None when
    ``err`` is not about damaged records or ``verify_records`` finds nothing. Framing
    damage (DataLossError) is located without decoding; a PNG error by decoding the films."""
    text = getattr(err, "message", None) or str(err)
    if isinstance(err, tf.errors.DataLossError):
        decode = False
    elif isinstance(err, tf.errors.InvalidArgumentError) and ".tfrecord" not in text and "png" in text.lower():
        decode = True
    else:
        return None
    try:
        for records_dir in records if isinstance(records, (list, tuple)) else [records]:
            for split in splits or sorted(manifest.read(records_dir).splits):
                verify_records(records_dir, split, decode=decode)
    except RecordsError as found:
        return found
    return None
