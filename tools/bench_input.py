"""Benchmark the input pipeline against the usual PNG-folder loader.

    python tools/bench_input.py --data-dir /data/nih-sample [--labels CSV] [--batch-size 32] [--image-size 224]

Builds records from the films in --data-dir (``cxr_tf.data.builder.build_records``) into a
temporary folder (or uses ``--records``). A training epoch on NIH holds ~78,000
films; one on a sample of 150 holds 3 batches, and restarting the pipeline every 3
batches (threads, autotuning, shuffle buffer) would be most of what gets measured.
So the training split is tiled (its shards linked ``--epoch-films`` / N times under
new shard names) until an epoch holds at least ``--epoch-films`` films (default 16,384,
4x the shuffle buffer: every timed batch is taken mid-epoch, with the buffer full and
refilled by decoding, as on NIH; near an epoch's end the buffer drains without
decoding and would flatter the figure). The pixels and the per-film work are those
of the sample. Then it prints, on the same films and
batch size (every figure taken once per round, the best of ``--repeats`` rounds):

1. images/s of ``cxr_tf.data.pipeline.make_dataset`` in training mode (augmentation on; with
   and without the in-memory cache of decoded films; and, no cache, on tf.data's
   default shared thread pool instead of the pipeline's own), in training mode without
   augmentation (the host's share when ``augment_on: model`` moves it into the train
   step), and in evaluation mode; and images/s of the augmentation block alone,
   jit-compiled, on this machine's accelerator (its CPU when there is none);
2. images/s of the baseline the published projects use: ``tf.data`` from the
   original PNG paths, ``decode_png`` + resize at every step, parallel map, prefetch;
3. the starvation ratio: training images/s of a small model (``--model``, default
   simple_cnn; ``--mixed-precision`` for float16 on a GPU) fed by the training
   pipeline divided by the same model fed by the same batches already in memory
   (1.0 = the model never waits for data). On a GPU host:
   ``--model densenet121 --mixed-precision`` gives DenseNet121's images/s at 224 px.

The last line reads ``pipeline_vs_png=<r> starvation=<r>``; pipeline_vs_png is the
training pipeline WITH augmentation and without cache (the slowest configuration we
ship) over the baseline, which does no augmentation. On a CPU-only machine the
model and the pipeline share the same cores, so the starvation ratio there measures
contention as much as waiting.
"""

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_tf.data import manifest, pipeline as data
from cxr_tf.data.builder import build_records


def images_per_s(ds, batches, warmup=3):
    """images/s of ``batches`` batches of ``ds`` (a repeated dataset of (x, y)
    batches) from a fresh iterator, after ``warmup`` batches. The iterator is gone
    when this returns, so its prefetching cannot steal cores from the next figure."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        count += int((x["image"] if isinstance(x, dict) else x).shape[0])
    rate = count / (time.perf_counter() - start)
    del it
    gc.collect()
    return rate


def tile_train_split(records, out, epoch_films):
    """``out``: a records folder whose train split links the shards of ``records`` as
    many times as needed for an epoch of at least ``epoch_films`` films (val/test
    linked once). Returns (out, times tiled)."""
    import dataclasses
    import math

    from cxr_tf.data.records import shard_name

    source = manifest.read(records)
    times = max(1, math.ceil(epoch_films / max(1, source.splits["train"].count)))
    out.mkdir(parents=True)
    splits = {}
    for split, info in source.splits.items():
        repeat = times if split == "train" else 1
        count = len(info.shards) * repeat
        names = [shard_name(split, i, count) for i in range(count)]
        for i, name in enumerate(names):
            (out / name).symlink_to(Path(records, info.shards[i % len(info.shards)]).resolve())
        splits[split] = dataclasses.replace(info, count=info.count * repeat, shards=tuple(names),
                                            label_counts={k: v * repeat for k, v in info.label_counts.items()})
    manifest.write(out, dataclasses.replace(source, splits=splits))
    return out, times


def best_of_rounds(measures, repeats):
    """{name: best images/s}: every measurement (a callable) once per round,
    ``repeats`` rounds, so that a change of machine speed (other tenants) hits all
    of them alike instead of the ones that happen to run last."""
    best = dict.fromkeys(measures, 0.0)
    for _ in range(repeats):
        for name, measure in measures.items():
            best[name] = max(best[name], measure())
    return best


def png_folder_dataset(paths, labels, batch_size, image_size):
    """The usual loader: read the original PNG, decode, resize, at every step."""
    def load(path, label):
        image = tf.io.decode_png(tf.io.read_file(path), channels=1)
        image = tf.image.resize(image, (image_size, image_size))  # float32 0..255
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths)).repeat()
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def augmenter_measure(batch_size, stored, image_size, batches):
    """A callable giving images/s of the augmentation block alone, jit-compiled as in
    the pipeline, on the default device, on a uint8 batch already there."""
    from cxr_tf.data.augment import build_augmenter

    augmenter = build_augmenter(None, image_size, seed=0)
    step = tf.function(lambda x: augmenter(x, training=True), jit_compile=True)
    x = tf.cast(tf.random.uniform((batch_size, stored, stored, 1), 0, 256, tf.int32), tf.uint8)  # as decoded
    float(tf.reduce_sum(step(x)))  # compile

    def measure():
        start = time.perf_counter()
        for _ in range(batches):
            y = step(x)
        float(tf.reduce_sum(y))  # wait for the device
        return batches * batch_size / (time.perf_counter() - start)
    return measure


def train_images_per_s(step, iterator, steps, batch_size):
    """images/s of ``steps`` calls of Keras' compiled train step on ``iterator``."""
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(iterator)
    float(np.asarray(logs["loss"]))  # wait for the last step (asynchronous on a GPU)
    return steps * batch_size / (time.perf_counter() - start)


def starvation(records, batch_size, image_size, steps, repeats, arch="simple_cnn", mixed_precision=False):
    """(ratio, fed images/s, in-memory images/s): the same compiled train step of
    ``arch`` pulling from the training pipeline vs from batches already in memory; the
    two are measured alternately (best of ``repeats`` each) so that load from other
    processes hits both alike."""
    import keras

    from cxr_tf.training.trainer import precision_policy
    from cxr_tf.models import build_model

    keras.config.set_dtype_policy(precision_policy(mixed_precision))
    model = build_model(arch, image_size=image_size, weights=None)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    fed = data.make_dataset(records, "train", batch_size, image_size, seed=0).repeat()
    batches = list(fed.take(8))  # the same pipeline's batches, materialised
    memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([b[0] for b in batches]), tf.stack([b[1] for b in batches]))).repeat()
    model.fit(memory, steps_per_epoch=2, epochs=1, verbose=0)  # build and trace once
    step = model.make_train_function()
    fed_it, mem_it = iter(fed), iter(memory)
    for _ in range(3):  # warm both: shuffle buffer filled, threads started
        step(fed_it), step(mem_it)
    mem = fed_rate = 0.0
    for _ in range(repeats):
        mem = max(mem, train_images_per_s(step, mem_it, steps, batch_size))
        fed_rate = max(fed_rate, train_images_per_s(step, fed_it, steps, batch_size))
    return fed_rate / mem, fed_rate, mem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="folder with the PNG films")
    parser.add_argument("--labels", type=Path, help="NIH label table (default: found in --data-dir)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--stored-size", type=int, help="size to build the records at (default: image size)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--fit-steps", type=int, default=10, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is kept")
    parser.add_argument("--records", type=Path, help="use these records instead of building")
    parser.add_argument("--epoch-films", type=int, default=16384,
                        help="tile the training split to at least this many films per epoch")
    parser.add_argument("--model", default="simple_cnn", help="architecture for the starvation ratio")
    parser.add_argument("--mixed-precision", action="store_true", help="starvation model in mixed precision")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        records = args.records
        if records is None:
            records = Path(tmp) / "records"
            start = time.perf_counter()
            build_records(data_dir=args.data_dir, labels=args.labels, out=records,
                          image_size=args.stored_size or args.image_size, seed=0, progress=False,
                          log=lambda *a, **k: None)
            print(f"built records in {time.perf_counter() - start:.1f} s -> {records}")
        records, times = tile_train_split(records, Path(tmp) / "tiled", args.epoch_films)
        tiled = manifest.read(records)
        films = tiled.splits["train"].count
        print(f"training split: {films // times} films, tiled x{times} -> {films} films per epoch")
        stored = tiled.image_size
        bs, size = args.batch_size, args.image_size
        print(f"stored {stored} px, training size {size} px, batch {bs}, "
              f"{tf.config.list_logical_devices()[-1].device_type}, "
              f"{len(tf.config.list_physical_devices('CPU'))} CPU device(s)")
        paths = sorted(str(p) for p in args.data_dir.rglob("*.png"))
        if args.labels:  # only the films of the table, as the builder does
            from cxr_tf.data.datasets.nih import read_label_table

            known = set(read_label_table(args.labels)["image_index"])
            paths = [p for p in paths if Path(p).name in known]
        labels = np.zeros((len(paths), 14), np.float32)  # label values do not change the cost

        shared_pool = tf.data.Options()  # tf.data's default: TensorFlow's inter-op pool, one thread per core
        shared_pool.threading.private_threadpool_size = 0
        datasets = {
            "train": data.make_dataset(records, "train", bs, size, seed=0),
            "train_cached": data.make_dataset(records, "train", bs, size, seed=0, cache="memory"),
            "train_shared_pool": data.make_dataset(records, "train", bs, size, seed=0).with_options(shared_pool),
            "host_share": data.make_dataset(records, "train", bs, stored, seed=0, augment=False),
            "evaluation": data.make_dataset(records, "train", bs, size, training=False),
            "png": png_folder_dataset(paths, labels, bs, size),
        }
        for _ in datasets["train_cached"]:  # one whole epoch fills the cache: later iterators read it
            pass
        measures = {name: (lambda ds=ds.repeat(): images_per_s(ds, args.batches)) for name, ds in datasets.items()}
        measures["on_device"] = augmenter_measure(bs, stored, size, args.batches)
        r = best_of_rounds(measures, args.repeats)
        device = tf.config.list_logical_devices()[-1].device_type
        print(f"pipeline training (augment, no cache): {r['train']:8.1f} images/s")
        print(f"  same, tf.data's shared thread pool:  {r['train_shared_pool']:8.1f} images/s  "
              f"(own pool of {data.input_threads()}: x{r['train'] / r['train_shared_pool']:.2f})")
        print(f"pipeline training (augment, cache):    {r['train_cached']:8.1f} images/s")
        print(f"pipeline training (augment in model):  {r['host_share']:8.1f} images/s  (host share, no cache)")
        print(f"augmentation block alone on {device}:    {r['on_device']:8.1f} images/s  (jit-compiled)")
        print(f"pipeline evaluation:                   {r['evaluation']:8.1f} images/s")
        png = r["png"]
        print(f"PNG-folder baseline ({len(paths)} files): {png:8.1f} images/s")

        ratio, fed, mem = starvation(records, bs, size, args.fit_steps, args.repeats, args.model,
                                     args.mixed_precision)
        precision = " (mixed precision)" if args.mixed_precision else ""
        print(f"{args.model}{precision} training fed by the pipeline: {fed:.1f} images/s; "
              f"on in-memory batches: {mem:.1f} images/s")
        print(f"evaluation_vs_png={r['evaluation'] / png:.2f} cached_training_vs_png={r['train_cached'] / png:.2f} "
              f"augment_in_model_host_vs_png={r['host_share'] / png:.2f}")
        print(f"pipeline_vs_png={r['train'] / png:.2f} starvation={ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
