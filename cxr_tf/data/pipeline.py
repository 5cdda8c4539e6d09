"""The tf.data input pipeline: TFRecord shards -> batches of films and labels.

``make_dataset(records, split, batch_size, image_size)`` reads the shards that
``python -m cxr_tf.build`` wrote (schema: ``cxr_tf.data.records``) from one records folder,
several, or a ``cxr_tf.data.sources.Sources``, and yields

    images  float32 (B, S, S, 1), raw 0–255        labels  float32 (B, K), the manifest's label order

or, with ``multimodal=True``, ``({"image": images, "meta": (B, META_DIM)}, labels)``,
and with ``with_ids=True`` a third element ``{"image_index": string (B,),
"patient_id": int64 (B,)}`` (for evaluation code that iterates itself: Keras
``fit``/``predict`` would read a third element as sample weights).

Training chain (``training=True``, the default for split ``train``)::

    shard names ─shuffle─> parallel interleave of TFRecordDataset (non-deterministic)
      -> parse -> check PNG header (names the shard) -> decode PNG to uint8 (N, N, 1)
      -> [cache: memory or file, decoded uint8, before any random op]
      -> shuffle (``shuffle_buffer`` records) -> batch(drop_remainder=True)
      -> augmentation on the uint8 batch (per sample, one XLA program that also casts to
         float32; ``cxr_tf.data.augment``) -> prefetch

With ``augment=False`` and S = N the chain stops before augmentation: that is how
``cxr_tf.training.trainer`` feeds ``augment.AugmentedModel``, which augments inside the train
step on the accelerator (``augment_on`` in ``pipelines/*.yaml``).

Evaluation chain: shards in manifest order, records in file order (deterministic,
parallel decode keeps the order), every example exactly once (no repeat, no dropped
remainder), no augmentation, area resize when S < N.

Image size: N is the size stored in the shards (manifest ``image_size``); S is the
requested size. S == N: pixels untouched at evaluation. S < N: training takes a
random resized crop of the stored film to S (inside the augmentation warp; a plain
resize when augmentation is off), evaluation an area resize. S > N is refused:
upsampling invents no detail and usually means the records were built at the wrong
size; rebuild them at S.

Neither chain repeats: one pass is one epoch. Training drops the last partial batch
(every step sees ``batch_size`` films); evaluation keeps it.

Distribution: ``batch_size`` is the GLOBAL batch size. ``model.fit`` under a
``tf.distribute`` strategy, or ``strategy.experimental_distribute_dataset``, splits
each batch across replicas (``batch_size / num_replicas`` each). Across workers
tf.data auto-shards by FILE when there are at least as many shards as workers, else by
DATA (``auto_shard_policy``); the caller passes the worker count (the trainer reads it from
``TF_CONFIG`` with ``cxr_tf.training.distribute.num_workers``).
With FILE sharding and uneven shards, workers can run different numbers of steps:
repeat the dataset and pass ``steps_per_epoch`` in multi-worker training.

Corrupt data: a record whose image is not a PNG of the stored size stops the
pipeline with an InvalidArgumentError naming the shard and the image; damage that
TensorFlow's readers report without a file name (a TFRecord CRC failure, a truncated
PNG stream) is found and named by ``cxr_tf.data.verify.verify_records``; ``locate_damage``
there turns such an error into a ``RecordsError`` naming the shard and the first damaged
record (fit and evaluate do this for you).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_tf.data import manifest
from cxr_tf.data.augment import build_augmenter
from cxr_tf.data.harmonise import label_columns
from cxr_tf.data.records import parse_example, parse_shard_name
from cxr_tf.data.sources import Sources, check_image_size

AGE_RANGE = (0.0, 120.0)  # ages outside are table errors (the 2017 table has 414): clipped
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_request(records, records_dir, split, image_size):
    """Validate a request against a records folder and its manifest ``records`` (a
    ``Manifest``); returns (shard paths, stored size)."""
    check_image_size(image_size, records.image_size, records_dir)
    if split not in records.splits:
        raise ValueError(f"split {split!r} is not in {manifest.path(records_dir)}; "
                         f"its splits are {sorted(records.splits)}")
    names = records.splits[split].shards
    if not names:
        raise ValueError(f"split {split!r} in {records_dir} lists no shards; rebuild the records")
    paths = []
    for name in names:
        shard_split, _, _ = parse_shard_name(Path(name).name)
        if shard_split != split:
            raise ValueError(f"manifest split {split!r} lists shard {name} of split {shard_split!r}")
        path = Path(records_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in the manifest is missing; rebuild or copy it")
        if path.stat().st_size == 0:
            raise ValueError(f"shard {path} is empty (an interrupted copy?); rebuild or copy it")
        paths.append(str(path))
    _check_label_count(paths[0], len(records.labels), records_dir)
    return paths, records.image_size


def _check_label_count(shard, num_labels, records_dir):
    """ValueError when the first record of ``shard`` holds another number of labels than the
    manifest names (a manifest edited or copied from other records)."""
    for raw in tf.data.TFRecordDataset(shard).take(1):
        stored = len(tf.train.Example.FromString(raw.numpy()).features.feature["labels"].int64_list.value)
        if stored != num_labels:
            raise ValueError(f"{shard}: its records hold {stored} labels but {manifest.path(records_dir)} "
                             f"names {num_labels}; rebuild the records or restore their manifest")


# ---------------------------------------------------------------- metadata


def meta_tensor(age, sex, view, age_mean, age_std):
    """Graph version of ``meta_vector``: tensors (or Python values) of any batch
    shape -> float32 (..., META_DIM). Unknown age (negative: the records' -1) -> the mean;
    unknown sex or view -> zeros in that one-hot."""
    age = tf.cast(age, tf.float32)
    age = tf.clip_by_value(tf.where(age < 0, tf.cast(age_mean, tf.float32), age), *AGE_RANGE)  # -1: unknown
    sex = tf.strings.upper(tf.strings.strip(tf.convert_to_tensor(sex, tf.string)))
    view = tf.strings.upper(tf.strings.strip(tf.convert_to_tensor(view, tf.string)))
    return tf.stack([
        (age - age_mean) / age_std,
        tf.cast(tf.equal(sex, "M"), tf.float32),
        tf.cast(tf.equal(sex, "F"), tf.float32),
        tf.cast(tf.equal(view, "PA"), tf.float32),
        tf.cast(tf.equal(view, "AP"), tf.float32),
    ], axis=-1)


def meta_vector(age, sex, view, age_stats):
    """The metadata input for one film: np.float32 (META_DIM,) =
    [(age - age_mean) / age_std, sex_M, sex_F, view_PA, view_AP], with ``age_stats`` =
    (age_mean, age_std): the training films' (``manifest.read(folder).age_stats()``, or a
    run's ``runs.trained_age_stats(config)``). ``age`` in years (clipped to AGE_RANGE;
    None -> the mean); ``sex`` "M"/"F", ``view`` "PA"/"AP" (str or bytes; anything else,
    or None -> zeros)."""
    mean, std = age_stats
    age = mean if age is None else age
    sex = sex.decode() if isinstance(sex, bytes) else (sex or "")
    view = view.decode() if isinstance(view, bytes) else (view or "")
    return meta_tensor(float(age), sex, view, mean, std).numpy().astype(np.float32)


# ---------------------------------------------------------------- distribution


def auto_shard_policy(num_shards, num_workers):
    """FILE when every worker gets at least one shard, else DATA."""
    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if num_shards >= max(1, num_workers) else policy.DATA


# ---------------------------------------------------------------- records


def _decode(record, shard, stored, num_labels):
    """One serialized example (+ its shard path) -> dict with ``image`` uint8 (N, N, 1)."""
    ex = parse_example(record, num_labels)
    png = ex["image"]
    # The PNG header (signature, IHDR width/height) is checked here so that a bad
    # record names its shard: decode_png's own errors do not.
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(png, 0, 24), b"\0" * 24]), 0, 24)
    size = tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.int32, little_endian=False)
    ok = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE),
                        tf.reduce_all(tf.equal(size, stored)))
    check = tf.debugging.Assert(ok, [
        "corrupt record in shard", shard, "image_index", ex["image_index"],
        f": the image is not a {stored}x{stored} PNG (width, height):", size,
        "— rebuild that shard with tools/build_tfrecords.py"], summarize=4)
    with tf.control_dependencies([check]):
        image = tf.io.decode_png(png, channels=1)
    ex["image"] = tf.ensure_shape(image, (stored, stored, 1))
    return ex


def _reader(files, training, seed):
    """Dataset of (serialized record, shard path)."""
    def read(path):
        return tf.data.TFRecordDataset(path, buffer_size=8 << 20).map(lambda r: (r, path))

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return ds.interleave(read, cycle_length=min(len(files), 16), block_length=1,
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    # evaluation: manifest order, each shard read to the end before the next
    return ds.interleave(read, cycle_length=1, num_parallel_calls=None)


def _cache(ds, request, stored, source=""):
    """``request.cache`` applied; ``source``: the records folder's name when several are read
    together (one cache each)."""
    cache = request.cache
    if cache in (None, False):
        return ds
    if cache is True or cache == "memory":
        return ds.cache()
    path = Path(cache)
    tag = f"{source}-" if source else ""
    if path.is_dir() or str(cache).endswith(os.sep):
        path.mkdir(parents=True, exist_ok=True)
        kind = ("train" if request.training else "eval") + ("-meta" if request.multimodal else "")
        path = path / f"{tag}{request.split}-{stored}px-{kind}.cache"
    elif tag:
        path = path.with_name(f"{path.name}-{tag[:-1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return ds.cache(str(path))


def input_threads():
    """Size of the pipeline's own thread pool: twice the cores this process may use,
    at least 4. By default tf.data shares TensorFlow's inter-op pool (one thread per
    core) with the model; its own, larger pool keeps the cores busy while the
    XLA-compiled augmentation of one batch runs: +10-20 % training input on 2 cores
    (tools/bench_input.py)."""
    from cxr_tf.data.builder import default_workers

    return max(4, 2 * default_workers())


@dataclass(frozen=True)
class _Request:
    """What ``make_dataset`` was asked for (its arguments, resolved), handed to its helpers."""

    split: str
    batch_size: int
    image_size: int
    training: bool
    multimodal: bool
    with_ids: bool
    cache: object
    shuffle_buffer: int
    seed: int | None
    deterministic: bool
    labels: tuple | None
    age_stats: tuple | None


def make_dataset(records, split, batch_size, image_size=224, *, training=None, multimodal=False, with_ids=False,
                 augment=None, cache=None, shuffle_buffer=4096, seed=None, deterministic=None, num_workers=1,
                 age_stats=None):
    """The ``tf.data.Dataset`` of one split (see the module docstring for the chain).

    records: a records folder (shards + manifest), a list of them read as one, or a
    ``cxr_tf.data.sources.Sources`` (which chooses the label set and the folders'
    proportions). Several folders yield their common label set (``cxr_tf.data.harmonise``;
    -1, missing, for a finding a folder does not label); training samples films from them at
    random in the ``Sources``' proportions (default: their sizes) and never ends (``repeat``
    is inside: take the steps of an epoch); evaluation reads them one after the other; they
    must store the same image size.
    split: "train", "val" or "test". batch_size: GLOBAL batch size (split across replicas by tf.distribute).
    image_size: S, the side fed to the model (<= the stored size). training: defaults
    to ``split == "train"``; True = shuffle + drop remainder + augmentation.
    multimodal: also yield the (B, META_DIM) metadata vector (``meta_vector``).
    with_ids: also yield {"image_index", "patient_id"}. cache: None (off), "memory",
    or a file prefix / existing folder for an on-disk cache of the decoded uint8
    films (placed before any random op, so every epoch gets fresh augmentation;
    a file cache is written on the first complete pass and must not be shared by
    two pipelines running at once). augment: None = ``cxr_tf.data.augment.DEFAULT_AUGMENT``
    when training, False = none, or a dict of parameters (pipelines yaml ``augment:``)
    merged over the defaults; ignored at evaluation. shuffle_buffer: records held for
    shuffling (memory: N² bytes each, 64 KiB at 256 px). seed: shard order, shuffle
    and augmentation draws. deterministic: element order; default: not training (a seed
    alone does not make a parallel training pipeline's order repeatable; pass True for
    that). num_workers: worker processes, for the auto-shard policy (default 1). age_stats:
    (mean, std) standardising the metadata input's age (default: the folder's training
    films; several folders: pooled, ``Sources.age_stats``).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sources = records if isinstance(records, Sources) else Sources(records)
    training = (split == "train") if training is None else bool(training)
    several = len(sources.folders) > 1
    request = _Request(split, int(batch_size), int(image_size), training, multimodal, with_ids, cache,
                       shuffle_buffer, seed, (not training) if deterministic is None else bool(deterministic),
                       tuple(sources.labels) if sources.mapped else None,
                       age_stats or (sources.age_stats() if several else None))
    # one folder: fewer films than a batch yields nothing (checked); several are repeated
    read = [_films(folder, m, request, check_batch=not several)
            for folder, m in zip(sources.folders, sources.manifests)]
    if not several:
        ds = read[0][0]
    elif training:
        weights = sources.weights or [float(m.splits[split].count) for m in sources.manifests]
        ds = tf.data.Dataset.sample_from_datasets([d.repeat() for d, _ in read],
                                                  [w / sum(weights) for w in weights], seed=seed)
    else:
        ds = read[0][0]
        for other, _ in read[1:]:
            ds = ds.concatenate(other)
    ds = _batches(ds, request, augment, sources.image_size)
    options = tf.data.Options()
    options.deterministic = request.deterministic
    options.threading.private_threadpool_size = input_threads()
    workers = int(num_workers)
    # several folders are sampled or chained, not read file by file: shard them by element
    options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.DATA if several
                                                         else auto_shard_policy(len(read[0][1]), workers))
    return ds.with_options(options)


def _batches(ds, request, augment, stored):
    """Single films -> the batches ``make_dataset`` yields (augmented when training)."""
    image_size = request.image_size
    augment_batch = None
    if request.training and augment is not False:
        augmenter = build_augmenter(augment if augment is not True else None, image_size, seed=request.seed)
        # XLA: one fused program per batch shape, ~3x the plain ops on CPU (cxr_tf.data.augment)
        augment_batch = tf.function(lambda images: augmenter(images, training=True), jit_compile=True)
    ds = ds.batch(request.batch_size, drop_remainder=request.training, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=request.deterministic)

    def finish(batch):
        images = batch["image"]  # (B, N, N, 1) uint8
        if augment_batch is not None:
            images = augment_batch(images)  # (B, S, S, 1) float32 0..255, per-sample draws
        else:
            images = tf.cast(images, tf.float32)
            if image_size != stored:
                images = tf.image.resize(images, (image_size, image_size), method="area")
        images = tf.ensure_shape(images, (None, image_size, image_size, 1))
        x = {"image": images, "meta": batch["meta"]} if request.multimodal else images
        if request.with_ids:
            return x, batch["labels"], {"image_index": batch["image_index"], "patient_id": batch["patient_id"]}
        return x, batch["labels"]

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=request.deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def _films(records_dir, records, request, check_batch):
    """(dataset of single decoded films (dicts), its shard paths) of one records folder's split
    (``records``: its manifest): read, parsed, labels mapped to ``request.labels``, cached,
    shuffled when training. ``check_batch``: refuse a training split smaller than a batch."""
    split = request.split
    files, stored = check_request(records, records_dir, split, request.image_size)
    num_examples = records.splits[split].count
    if check_batch and request.training and 0 < num_examples < request.batch_size:
        raise ValueError(f"split {split!r} of {records_dir} has {num_examples} films, fewer than "
                         f"batch_size={request.batch_size}: training drops the last partial batch and would "
                         "yield nothing")
    num_labels = len(records.labels)
    columns = None if request.labels is None else label_columns(records, request.labels)
    age_stats = (request.age_stats or records.age_stats()) if request.multimodal else None

    def to_element(record, shard):
        ex = _decode(record, shard, stored, num_labels)
        y = ex["labels"]
        if columns is not None:  # the records' labels -> ``labels``; -1 where they have none
            y = tf.gather(tf.concat([y, tf.constant([-1], tf.int64)], 0),
                          [c if c >= 0 else num_labels for c in columns])
        out = {"image": ex["image"], "labels": tf.cast(y, tf.float32)}
        if request.multimodal:
            out["meta"] = meta_tensor(ex["age"], ex["sex"], ex["view"], *age_stats)
        if request.with_ids:
            out["image_index"], out["patient_id"] = ex["image_index"], ex["patient_id"]
        return out

    ds = _reader(files, request.training, request.seed)
    ds = ds.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=request.deterministic)
    ds = _cache(ds, request, stored, Path(records_dir).name if request.labels else "")
    if request.training:
        buffer = max(1, min(int(request.shuffle_buffer), num_examples or int(request.shuffle_buffer)))
        ds = ds.shuffle(buffer, seed=request.seed, reshuffle_each_iteration=True)
    return ds, files
