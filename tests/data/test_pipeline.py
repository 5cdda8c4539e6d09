"""cxr_tf.data.pipeline / cxr_tf.data.augment on real shards built from the 150 real NIH films (64 px)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import TEST_DATA
from cxr_tf.data import manifest, pipeline as data
from cxr_tf.data.augment import DEFAULT_AUGMENT, AugmentedModel, RandomGeometry, build_augmenter, warp_bilinear
from cxr_tf.data.labels import LABELS, META_DIM, NUM_LABELS
from cxr_tf.data.records import parse_example, serialize_example, shard_name
from cxr_tf.data.sources import Sources
from cxr_tf.data.verify import verify_records

TABLE = TEST_DATA / "nih-sample" / "Data_Entry_sample.csv"
NO_AUG = {"crop_scale": (1, 1), "crop_ratio": (1, 1), "rotation_degrees": 0, "zoom": 0, "translation": 0,
          "brightness": 0, "contrast": 0}


@pytest.fixture(scope="module")
def table():
    """image_index -> row of the sample label table, with the multi-hot vector."""
    df = pd.read_csv(TABLE).set_index("Image Index")
    df["multi_hot"] = [np.array([label in f.split("|") for label in LABELS], np.float32)
                       for f in df["Finding Labels"]]
    return df


def _stored(records_dir, split):
    """image_index -> decoded uint8 (N, N, 1), read straight from the shards."""
    out = {}
    for name in manifest.read(records_dir).splits[split].shards:
        for record in tf.data.TFRecordDataset(str(Path(records_dir) / name)):
            ex = parse_example(record)
            out[ex["image_index"].numpy().decode()] = tf.io.decode_png(ex["image"], channels=1).numpy()
    return out


def _collect(ds):
    """Concatenate (x, labels, ids) batches of a with_ids dataset into numpy arrays."""
    xs, ys, ids, pids = [], [], [], []
    for x, y, extra in ds:
        xs.append(x["image"].numpy() if isinstance(x, dict) else x.numpy())
        ys.append(y.numpy())
        ids += [s.decode() for s in extra["image_index"].numpy()]
        pids.append(extra["patient_id"].numpy())
    return np.concatenate(xs), np.concatenate(ys), ids, np.concatenate(pids)


@pytest.fixture(scope="module")
def two_shards(sample_records, tmp_path_factory):
    """A copy of the sample records whose train split is written as two shards."""
    out = tmp_path_factory.mktemp("two_shards")
    source = manifest.read(sample_records)
    records = [r.numpy() for name in source.splits["train"].shards
               for r in tf.data.TFRecordDataset(str(sample_records / name))]
    names = [shard_name("train", i, 2) for i in range(2)]
    for i, name in enumerate(names):
        with tf.io.TFRecordWriter(str(out / name)) as writer:
            for record in records[i::2]:
                writer.write(record)
    for split in ("val", "test"):
        for name in source.splits[split].shards:
            shutil.copy(sample_records / name, out / name)
    train = dataclasses.replace(source.splits["train"], shards=tuple(names))
    manifest.write(out, dataclasses.replace(source, splits={**source.splits, "train": train}))
    return out


def test_training_batches_shapes_dtypes_ranges(sample_records):
    n = manifest.read(sample_records).splits["train"].count
    ds = data.make_dataset(sample_records, "train", batch_size=16, image_size=48, seed=0)
    batches = list(ds)
    assert len(batches) == n // 16  # drop_remainder: every step is a full batch
    for images, labels in batches:
        assert images.dtype == tf.float32 and images.shape == (16, 48, 48, 1)
        assert labels.dtype == tf.float32 and labels.shape == (16, NUM_LABELS)
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
        assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    assert float(tf.reduce_max(batches[0][0])) > 100  # raw 0-255 scale, not 0-1
    assert ds.options().deterministic is False


def test_evaluation_complete_deterministic_untouched_and_labels_match_table(sample_records, table):
    records = manifest.read(sample_records)
    seen = []
    for split in ("train", "val", "test"):
        n = records.splits[split].count
        ds = data.make_dataset(sample_records, split, batch_size=16, image_size=64, training=False,
                               with_ids=True, augment={"rotation_degrees": 30})  # ignored at evaluation
        images, labels, ids, pids = _collect(ds)
        assert len(ids) == n == len(set(ids))  # every example exactly once, last partial batch kept
        assert images.dtype == np.float32 and images.shape == (n, 64, 64, 1)
        np.testing.assert_array_equal(labels, np.stack(table.loc[ids, "multi_hot"]))
        np.testing.assert_array_equal(pids, table.loc[ids, "Patient ID"].to_numpy())
        stored = _stored(sample_records, split)
        np.testing.assert_array_equal(images, np.stack([stored[i] for i in ids]).astype(np.float32))
        again = _collect(ds)
        assert again[2] == ids and np.array_equal(again[0], images)  # same order, same pixels
        seen += ids
    assert sorted(seen) == sorted(table.index)  # the three splits cover the 150 films once


def test_evaluation_resizes_below_stored_size(sample_records):
    images, labels = next(iter(data.make_dataset(sample_records, "val", batch_size=4, image_size=32)))
    assert images.shape == (4, 32, 32, 1) and labels.shape == (4, NUM_LABELS)


def test_augmentation_changes_training_images_each_epoch(sample_records):
    stored = _stored(sample_records, "train")
    ds = data.make_dataset(sample_records, "train", batch_size=16, image_size=64, with_ids=True, seed=3,
                           cache="memory")
    first, _, ids, _ = _collect(ds)
    original = np.stack([stored[i] for i in ids]).astype(np.float32)
    per_image = np.abs(first - original).mean(axis=(1, 2, 3))
    assert (per_image > 1.0).all()  # every film changed
    assert first.min() >= 0 and first.max() <= 255
    second, _, ids2, _ = _collect(ds)
    order = {name: k for k, name in enumerate(ids2)}
    second = second[[order[i] for i in ids if i in order]]
    changed = np.abs(second - first[[k for k, i in enumerate(ids) if i in order]]).mean(axis=(1, 2, 3))
    assert (changed > 1.0).all()  # fresh draws every epoch, although the cache holds the decoded films
    # switched off: training films equal the stored ones
    plain, _, ids, _ = _collect(data.make_dataset(sample_records, "train", batch_size=16, image_size=64,
                                                  with_ids=True, seed=3, augment=False))
    np.testing.assert_array_equal(plain, np.stack([stored[i] for i in ids]).astype(np.float32))


def test_cache_gives_the_same_data(sample_records, tmp_path):
    plain = _collect(data.make_dataset(sample_records, "test", 8, 64, with_ids=True))
    for cache in ("memory", tmp_path / "cache_dir", str(tmp_path / "prefix")):
        if cache == tmp_path / "cache_dir":
            cache.mkdir()
        ds = data.make_dataset(sample_records, "test", 8, 64, with_ids=True, cache=cache)
        for _ in range(2):  # first pass fills the cache, second reads it
            got = _collect(ds)
            assert got[2] == plain[2]
            np.testing.assert_array_equal(got[0], plain[0])
            np.testing.assert_array_equal(got[1], plain[1])
    assert list((tmp_path / "cache_dir").glob("test-64px-eval.cache*"))
    # training: same seed, deterministic order, augmentation off -> identical batches
    kw = dict(batch_size=16, image_size=64, with_ids=True, seed=5, augment=False, deterministic=True)
    a = _collect(data.make_dataset(sample_records, "train", **kw))
    b = _collect(data.make_dataset(sample_records, "train", cache="memory", **kw))
    assert a[2] == b[2]
    np.testing.assert_array_equal(a[0], b[0])


def test_multimodal_meta_and_prevalence(sample_records, table):
    records = manifest.read(sample_records)
    ds = data.make_dataset(sample_records, "val", 8, 64, multimodal=True, with_ids=True)
    for x, labels, extra in ds:
        assert set(x) == {"image", "meta"} and x["meta"].shape[1:] == (META_DIM,)
        for meta, name in zip(x["meta"].numpy(), extra["image_index"].numpy()):
            row = table.loc[name.decode()]
            expected = data.meta_vector(row["Patient Age"], row["Patient Gender"], row["View Position"],
                                        records.age_stats())
            np.testing.assert_allclose(meta, expected, rtol=1e-6)
    mean, std = records.age_mean, records.age_std
    v = data.meta_vector(60, "F", b"AP", records.age_stats())
    assert v.dtype == np.float32 and v.shape == (META_DIM,)
    np.testing.assert_allclose(v, [(60 - mean) / std, 0, 1, 0, 1], rtol=1e-6)
    np.testing.assert_allclose(data.meta_vector(None, "?", "LL", (mean, std)), [0, 0, 0, 0, 0], atol=1e-6)
    train = table.loc[[i for i in _stored(sample_records, "train")]]
    np.testing.assert_allclose(Sources(sample_records).prevalence(), np.stack(train["multi_hot"]).mean(0), rtol=1e-6)
    np.testing.assert_allclose(Sources(sample_records).prevalence("test").shape, (NUM_LABELS,))


def test_augmenter_block():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 64, 64, 1)).astype("float32")
    aug = build_augmenter(None, 48, seed=1)
    assert DEFAULT_AUGMENT["flip"] is False  # off by default: anatomy is not symmetric
    y = aug(x, training=True).numpy()
    assert y.shape == (6, 48, 48, 1) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 255
    assert np.abs(y[0] - y[1]).mean() > 1  # per-sample draws
    np.testing.assert_allclose(aug(x, training=False).numpy(),
                               tf.image.resize(x, (48, 48), method="area").numpy(), atol=1e-3)
    same = build_augmenter(NO_AUG, 64)
    np.testing.assert_array_equal(same(x, training=True).numpy(), x)  # every op off -> identity
    np.testing.assert_array_equal(RandomGeometry(64)(x, training=False).numpy(), x)
    # flip alone: each film comes out as itself or its mirror image, and both happen
    flipped = build_augmenter({**NO_AUG, "flip": True}, 64, seed=2)(np.concatenate([x] * 4), training=True).numpy()
    mirrored = [np.array_equal(f, x[k % 6, :, ::-1]) for k, f in enumerate(flipped)]
    kept = [np.array_equal(f, x[k % 6]) for k, f in enumerate(flipped)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    with pytest.raises(ValueError, match="unknown augmentation parameter"):
        build_augmenter({"rotation": 10}, 64)
    with pytest.raises(ValueError, match="crop_scale"):
        build_augmenter({"crop_scale": (0.5, 1.5)}, 64)
    assert set(DEFAULT_AUGMENT) >= {"rotation_degrees", "zoom", "translation", "brightness", "contrast", "flip"}


def test_warp_matches_tensorflow_projective_transform_and_compiles_under_xla():
    # The warp is gathers (so XLA compiles it); it must sample exactly like TensorFlow's
    # own bilinear ImageProjectiveTransformV3 with black fill, including the borders.
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(0, 255, (5, 40, 40, 2)).astype("float32"))
    geometry = RandomGeometry(32, crop_scale=(0.5, 1), crop_ratio=(0.8, 1.25), rotation_degrees=30, zoom=0.2,
                              translation=0.1, flip=True, seed=0)
    t = geometry.transforms(5, 40)
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.concat([t, tf.zeros((5, 2))], axis=1), output_shape=[32, 32],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    np.testing.assert_allclose(warp_bilinear(x, t, 32), reference, atol=1e-3)
    jitted = tf.function(lambda images, maps: warp_bilinear(images, maps, 32), jit_compile=True)
    np.testing.assert_allclose(jitted(x, t), reference, atol=0.05)
    assert float(tf.reduce_mean(tf.cast(tf.equal(reference, 0), tf.float32))) > 0.01  # some black fill tested


def test_augmented_model_augments_in_the_train_step_only(sample_records):
    # augment_on: model. The dataset yields un-augmented films at the stored 64 px; the
    # wrapper crops/warps them to the model's 48 px inside the (XLA) train step, and
    # evaluation/predict at 48 px see the plain model.
    import keras

    from cxr_tf.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", image_size=48)
    trainer = AugmentedModel(model, build_augmenter(None, 48, seed=0))
    trainer.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", jit_compile=True)
    films = data.make_dataset(sample_records, "train", 16, 64, augment=False, seed=0)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = trainer.fit(films.repeat(), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    images, _ = next(iter(data.make_dataset(sample_records, "val", 8, 48)))
    np.testing.assert_allclose(trainer.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    x = next(iter(films))[0][:4]
    a, b = trainer.augmenter(x, training=True), trainer.augmenter(x, training=True)
    assert a.shape == (4, 48, 48, 1) and float(tf.reduce_mean(tf.abs(a - b))) > 1.0  # fresh draws per step
    # multimodal models: only the image input is augmented
    multimodal = AugmentedModel(build_model("multimodal", image_size=48), build_augmenter(None, 48, seed=0))
    meta = np.zeros((4, META_DIM), "float32")
    assert multimodal({"image": x, "meta": meta}, training=True).shape == (4, NUM_LABELS)


def test_clear_errors(sample_records, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.make_dataset(tmp_path / "nowhere", "train", 8, 64)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        data.make_dataset(tmp_path, "train", 8, 64)
    with pytest.raises(ValueError, match=r"split 'holdout' is not in .*\['test', 'train', 'val'\]"):
        data.make_dataset(sample_records, "holdout", 8, 64)
    with pytest.raises(ValueError, match="larger than the 64 px stored"):
        data.make_dataset(sample_records, "train", 8, 96)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        data.make_dataset(sample_records, "val", 64, 64, training=True)

    bad = tmp_path / "bad"
    shutil.copytree(sample_records, bad)
    records = manifest.read(bad)
    # a label set that does not fit the stored label vectors
    manifest.write(bad, dataclasses.replace(records, labels=LABELS[:5]))
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.tfrecord.* 14 labels.* names 5"):
        data.make_dataset(bad, "train", 8, 64)
    with pytest.raises(ValueError, match="metadata.age_mean"):
        manifest.Manifest(labels=LABELS, image_size=64, splits={}).age_stats()
    with pytest.raises(ValueError, match=r"manifest.json: a value does not have the expected type"):
        (bad / "manifest.json").write_text('{"labels": [], "image_size": "big", "splits": {}}')
        manifest.read(bad)

    # a record whose image is not a 64 px PNG: the pipeline error names the shard and the film
    good = (bad / records.splits["val"].shards[0]).read_bytes()
    with tf.io.TFRecordWriter(str(bad / "val-00000-of-00001.tfrecord")) as writer:
        writer.write(serialize_example(b"not a png at all", [0] * 14, "00099999_000.png", 1, 50, "M", "PA", 0))
    manifest.write(bad, records)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"val-00000-of-00001\.tfrecord(.|\n)*00099999_000"):
        list(data.make_dataset(bad, "val", 8, 64))
    with pytest.raises(ValueError, match=r"val-00000-of-00001\.tfrecord: record 0 \(image 00099999_000.png\)"):
        verify_records(bad, "val")
    # a truncated shard (TFRecord framing damage): verify_records names it
    (bad / "val-00000-of-00001.tfrecord").write_bytes(good[: len(good) - 100])
    with pytest.raises(ValueError, match=r"corrupt record in shard .*val-00000-of-00001\.tfrecord: record \d+ "):
        verify_records(bad, "val")
    (bad / "val-00000-of-00001.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="val-00000-of-00001.tfrecord listed in the manifest is missing"):
        data.make_dataset(bad, "val", 8, 64)
    assert verify_records(sample_records) == {s: v.count for s, v in records.splits.items()}


def test_auto_shard_policy():
    policy = tf.data.experimental.AutoShardPolicy
    assert data.auto_shard_policy(16, 4) == policy.FILE
    assert data.auto_shard_policy(2, 2) == policy.FILE
    assert data.auto_shard_policy(1, 2) == policy.DATA


_DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from cxr_tf.data import manifest, pipeline as data
    records = sys.argv[1]
    policy = tf.data.experimental.AutoShardPolicy
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ds = data.make_dataset(records, "train", batch_size=8, image_size=32, seed=0, num_workers=2)
    assert ds.options().experimental_distribute.auto_shard_policy == policy.FILE  # 2 shards, 2 workers
    one = data.make_dataset(records, "val", batch_size=8, image_size=32, num_workers=2)
    assert one.options().experimental_distribute.auto_shard_policy == policy.DATA  # 1 shard, 2 workers
    ev = data.make_dataset(records, "val", batch_size=8, image_size=32, with_ids=True)
    seen, per_replica = [], set()
    for x, y, ids in strategy.experimental_distribute_dataset(ev):
        for part in strategy.experimental_local_results(ids["image_index"]):
            seen += [s.decode() for s in part.numpy()]
        per_replica |= {int(p.shape[0]) for p in strategy.experimental_local_results(x)}
    assert max(per_replica) == 4, per_replica  # global batch 8 split over 2 replicas
    n = manifest.read(records).splits["val"].count
    assert sorted(seen) == sorted(set(seen)) and len(seen) == n, (len(seen), n)
    with strategy.scope():
        model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(14, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy")
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    print("DISTRIBUTED_OK", strategy.num_replicas_in_sync)
""")


def test_distributed_two_logical_cpus(two_shards):
    # logical devices must be configured before any TF op: a fresh interpreter
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", _DISTRIBUTED, str(two_shards)], capture_output=True,
                          text=True, timeout=180, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and "DISTRIBUTED_OK 2" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
