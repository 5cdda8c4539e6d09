"""What both TFRecord builders share (the local one, ``cxr_tf.data.builder``, and the Beam one,
``cxr_tf.data.beam_build``): the shard plan, the key that identifies a build, resuming, writing
one shard with its ``.build`` record, and the manifest made from those records. One code path, so
the two builders write the same records.

The output folder is reached through a small ``folder`` object: ``LocalFolder`` here (a path on
this machine), ``beam_build.BeamFolder`` over Beam's filesystems (local, ``gs://``, ``s3://``).
Both have: ``make()``, ``exists(name)``, ``read_text(name)``, ``write_text(name, text)``,
``write_json(name, value)`` (atomic where the filesystem allows), ``delete(name)`` (a missing file
is fine), ``names(suffix)`` (top-level file names ending with it), ``staging(name)`` (a local file
to write shard ``name`` into) and ``publish(staged, name)`` (the staged file becomes ``name``,
all at once). Names are relative to the folder (``.build/plan.json``).

This module imports neither TensorFlow nor Beam; ``write_shard`` imports TensorFlow when called.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from cxr_tf.data import harmonise, manifest, splits as splitting
from cxr_tf.data.datasets.base import MISSING, file_sha256, patient_number
from cxr_tf.data.jsonfile import write_json
from cxr_tf.data.manifest import Manifest, Split

PLAN_DIR = ".build"
PLAN_VERSION = 1
PLAN = f"{PLAN_DIR}/plan.json"
MANIFEST = manifest.path("").name  # the file's name is cxr_tf.data.manifest's


class LocalFolder:
    """A records folder on this machine (the ``folder`` interface of the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    def __str__(self):
        return str(self.path)

    def make(self):
        (self.path / PLAN_DIR).mkdir(parents=True, exist_ok=True)

    def exists(self, name):
        return (self.path / name).is_file()

    def read_text(self, name):
        return (self.path / name).read_text(encoding="utf-8")

    def write_text(self, name, text):
        (self.path / name).write_text(text, encoding="utf-8")

    def write_json(self, name, value):
        write_json(self.path / name, value)

    def delete(self, name):
        (self.path / name).unlink(missing_ok=True)

    def names(self, suffix):
        return sorted(p.name for p in self.path.glob(f"*{suffix}") if p.is_file())

    def staging(self, name):
        return self.path / f"{name}.tmp"

    def publish(self, staged, name):
        os.replace(staged, self.path / name)


def _estimated_example_bytes(image_size):
    # PNG (images.encode_png) of a downsized chest film: 0.42 (512 px) to 0.68 (64 px) bytes/pixel,
    # 0.48 at 224-256 px; plus the other features.
    return 0.48 * image_size * image_size + 400


def plan_shards(table, splits, image_size, shard_size_mb, seed):
    """[{"name", "split", "images": [image_index, ...]}, ...] in writing order.

    Each split's rows are shuffled with ``seed`` (so shards mix patients and
    findings) and cut into near-equal contiguous shards of about shard_size_mb."""
    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be positive, got {shard_size_mb}")
    from cxr_tf.data.records import shard_name  # noqa: PLC0415 (importing this module stays TensorFlow-free)

    rng = np.random.default_rng(seed)
    shards = []
    for split in splitting.SPLITS:
        names = table["image_index"][(splits == split).to_numpy()].to_numpy()
        if not len(names):
            continue
        names = names[rng.permutation(len(names))]
        total = len(names) * _estimated_example_bytes(image_size)
        count = max(1, min(len(names), math.ceil(total / (shard_size_mb * 2**20))))
        for i, part in enumerate(np.array_split(names, count)):
            shards.append({"name": shard_name(split, i, count), "split": split, "images": part.tolist()})
    return shards


def plan_key(settings, release, findings, lists_sha):
    """What identifies a build: the same key resumes it, another replaces its shards."""
    files_sha = hashlib.sha256("\n".join(sorted(release.table["image_index"])).encode()).hexdigest()
    stratified = settings.split == "stratified"
    key = {"version": PLAN_VERSION, "label_table_sha256": file_sha256(release.label_table),
           "files_sha256": files_sha, "image_size": int(settings.image_size), "split_method": settings.split,
           "val_fraction": float(settings.val_fraction),
           "test_fraction": float(settings.test_fraction) if stratified else 0.0, "seed": int(settings.seed),
           "shard_size_mb": float(settings.shard_size_mb), "official_lists_sha256": lists_sha}
    # A release without options, built with all its findings, keeps the key of the builds made
    # before releases had options and label subsets existed (so that those builds resume).
    if release.options or tuple(findings) != tuple(release.labels):
        key["findings"] = list(findings)
    if release.options:
        key.update(dataset=release.dataset, options=release.options)
    return key


def planned_splits(shards, table):
    """Split name per row of ``table`` as the plan assigns it (rows outside it: None)."""
    split_of = {name: shard["split"] for shard in shards for name in shard["images"]}
    return table["image_index"].map(split_of).astype(object)


def prepare_out(folder, key, shards, log):
    """(shards, done): the plan to follow and the names of its shards already
    complete. A plan stored by an earlier run with the same key is followed as
    stored; one with another key has its shards removed and is replaced."""
    folder.make()
    old = json.loads(folder.read_text(PLAN)) if folder.exists(PLAN) else None
    if old is not None and old.get("key") != key:
        log(f"{folder}: inputs or settings changed since the last build there; replacing its shards")
        for shard in old.get("shards", []):
            folder.delete(shard["name"])
            folder.delete(record_name(shard["name"]))
        folder.delete(MANIFEST)
        old = None
    if old is not None:
        shards = old["shards"]
    planned = {s["name"] for s in shards}
    strangers = [name for name in folder.names(".tfrecord") if name not in planned]
    if strangers:
        raise FileExistsError(f"{folder} holds shards this build did not plan ({strangers[:3]}...); "
                              f"remove them or choose another --out")
    if old is None:
        folder.write_json(PLAN, {"key": key, "shards": shards})
    for leftover in folder.names(".tmp"):
        folder.delete(leftover)  # partial shard of a killed build
    done = {s["name"] for s in shards if folder.exists(record_name(s["name"]))
            and (folder.exists(s["name"]) or not shard_record(folder, s["name"])["images"])}
    return shards, done


def record_name(shard):
    """Where the record of what went into shard ``shard`` lives in its folder."""
    return f"{PLAN_DIR}/{shard}.json"


def shard_record(folder, name):
    """What went into shard ``name`` ({"images", "skipped", ...}), from ``.build/<name>.json``."""
    return json.loads(folder.read_text(record_name(name)))


def example_fields(table, findings):
    """{image_index: [path, labels (K ints), patient, age, sex, view, follow_up]} of every row of
    ``table``: what ``write_shard`` stores of each film besides its pixels (plain Python values)."""
    # missing labels (NaN) and unknown ages are stored as -1 (cxr_tf.data.records)
    labels = np.nan_to_num(table[list(findings)].to_numpy(np.float64), nan=MISSING).astype(np.int64).tolist()
    ages = np.nan_to_num(table["age"].to_numpy(np.float64), nan=MISSING).astype(np.int64).tolist()
    fields = zip(table["path"].astype(str), labels, table["patient_id"].map(patient_number), ages,
                 table["sex"].astype(str), table["view"].astype(str), table["follow_up"])
    return {name: [path, labels, int(patient), int(age), sex, view, int(follow_up)]
            for name, (path, labels, patient, age, sex, view, follow_up) in zip(table["image_index"], fields)}


def write_shard(folder, shard, rows, results, bar=None):
    """Write one shard: its films' examples to a staged file, what went in to
    ``.build/<name>.json``, then the staged file under its final name (none when every film was
    skipped: no zero-byte shards, training refuses those). rows: ``example_fields``; results: an
    iterator of (png or None, reason or None) in the shard's film order; bar: a progress bar."""
    import tensorflow as tf  # noqa: PLC0415 (only the writing process needs it)

    from cxr_tf.data.records import serialize_example  # noqa: PLC0415

    staged = folder.staging(shard["name"])
    written, skipped = [], []
    try:
        with tf.io.TFRecordWriter(str(staged)) as writer:
            for name in shard["images"]:
                png, reason = next(results)
                if bar is not None:
                    bar.update(1)
                path, labels, patient, age, sex, view, follow_up = rows[name]
                if png is None:
                    skipped.append({"file": path, "reason": reason})
                    continue
                writer.write(serialize_example(png, labels, name, int(patient), int(age), str(sex), str(view),
                                               int(follow_up)))
                written.append(name)
        folder.write_json(record_name(shard["name"]),
                          {"shard": shard["name"], "split": shard["split"], "images": written, "skipped": skipped})
        if written:
            folder.publish(staged, shard["name"])
    finally:
        Path(staged).unlink(missing_ok=True)


def make_manifest(folder, shards, release, key, data_dir, warnings_, labels, build):
    """The records' ``Manifest``, from what the shards' ``.build`` records say went in."""
    records = {s["name"]: shard_record(folder, s["name"]) for s in shards}
    rows = release.table.set_index("image_index")
    summary = {}
    for split in splitting.SPLITS:
        names = [n for s in shards if s["split"] == split for n in records[s["name"]]["images"]]
        counts = splitting.summarise(rows.loc[names], labels)
        summary[split] = Split(count=counts["num_examples"], patients=counts["num_patients"],
                               label_counts=counts["label_counts"], label_known=counts["label_known"],
                               shards=tuple(s["name"] for s in shards
                                            if s["split"] == split and records[s["name"]]["images"]))
    train_ages = rows.loc[[n for s in shards if s["split"] == "train" for n in records[s["name"]]["images"]], "age"]
    train_ages = train_ages.dropna()
    skipped = [item for s in shards for item in records[s["name"]]["skipped"]]
    skipped += [{"file": str(path), "reason": "no row in the label table"} for path in release.files_without_rows]
    skipped += [{"file": str(ignored), "reason": f"duplicate file name; used {used}"}
                for ignored, used in release.duplicates]
    return Manifest(
        dataset=release.dataset, labels=tuple(labels), harmonised=harmonise.mapping(release.dataset, labels),
        options=release.options, image_size=key["image_size"], splits=summary,
        seed=key["seed"], split_method=key["split_method"],
        val_fraction=key["val_fraction"], test_fraction=key["test_fraction"],
        label_table=str(release.label_table), label_table_sha256=key["label_table_sha256"],
        data_dir=str(data_dir),
        skipped=skipped,
        rows_without_files={"count": len(release.rows_without_files),
                            "list": "rows_without_files.txt" if release.rows_without_files else None,
                            "first": release.rows_without_files[:10]},
        excluded={reason: {"count": len(names), "first": names[:10]} for reason, names in release.excluded.items()},
        # standardising constants for metadata models; std 1 when undefined or zero
        age_mean=float(train_ages.mean()) if len(train_ages) else 0.0,
        age_std=float(train_ages.std(ddof=0)) if len(train_ages) > 1 and train_ages.std() > 0 else 1.0,
        warnings=warnings_, build=build)


def format_summary(records, out):
    """The closing summary of a build (``records``: its ``Manifest``), as text."""
    lines = [f"records in {out} ({records.image_size} px, split {records.split_method}, seed {records.seed}):"]
    for name, split in records.splits.items():
        lines.append(f"  {name:5s} {split.count:7d} films  {split.patients:6d} patients  {len(split.shards):4d} shards")
    build = records.build or {}
    rate = f"{build['images_per_s']:.1f} images/s" if build.get("images_per_s") else "nothing to encode"
    lines.append(f"  skipped {len(records.skipped)} input file(s); "
                 f"{(records.rows_without_files or {}).get('count', 0)} table row(s) without a file")
    for reason, excluded in records.excluded.items():
        lines.append(f"  excluded {excluded['count']} input(s): {reason} (listed in excluded.txt)")
    how = f"Beam {build['runner']}" if build.get("runner") else f"{build.get('workers')} workers"
    lines.append(f"  {build.get('encoded', 0)} films encoded in {build.get('seconds', 0):.1f} s ({rate}, "
                 f"{how}); {build.get('resumed_shards', 0)} shards kept from before")
    for warning in records.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
