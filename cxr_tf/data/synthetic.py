"""Synthetic films with planted findings, for tests and smoke runs.

Each of the 14 labels is drawn as its own bright shape at its own fixed place on
a dark, noisy "film": the label grid is 4 × 4 cells (row-major, label ``k`` in
cell ``k``; the last two cells stay empty), so a model that learns can be
checked (macro AUC) and a Grad-CAM map can be checked against the known box.

``write_synthetic_records`` writes real shards (``cxr_tf.data.records``) and their manifest
(``cxr_tf.data.manifest``), so data, fit and explain tests run on the same files a real build
would give.
"""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from cxr_tf.data.images import encode_png
from cxr_tf.data.labels import LABELS, NUM_LABELS
from cxr_tf.data import manifest
from cxr_tf.data.records import serialize_example, shard_name

GRID = 4
SHAPES = (
    "filled_square", "disc", "ring", "plus", "cross", "triangle_up", "triangle_down",
    "horizontal_bar", "vertical_bar", "diamond", "hollow_square", "four_dots", "l_shape",
    "wide_ellipse",
)
"""Shape drawn for label k (``LABELS[k]``), in label order."""

POSITIVE_RATE = 0.3
"""Chance that a label is present on a film (besides the one label every film carries)."""


def label_boxes(image_size):
    """(14, 4) int array: per label the (x, y, w, h) pixel box its shape is drawn in,
    for films of ``image_size`` × ``image_size`` pixels."""
    if image_size < 2 * GRID:
        raise ValueError(f"image_size={image_size}: synthetic films need at least {2 * GRID} px")
    cell = image_size / GRID
    boxes = np.zeros((NUM_LABELS, 4), dtype=np.int64)
    for k in range(NUM_LABELS):
        row, col = divmod(k, GRID)
        x0, y0 = round(col * cell + 0.15 * cell), round(row * cell + 0.15 * cell)
        x1, y1 = round((col + 1) * cell - 0.15 * cell), round((row + 1) * cell - 0.15 * cell)
        boxes[k] = (x0, y0, max(x1 - x0, 2), max(y1 - y0, 2))
    return boxes


def _draw(img, shape, box, value):
    """Draw one shape, filling its box, with grey level ``value`` (in place)."""
    x, y, w, h = (int(v) for v in box)
    x1, y1 = x + w - 1, y + h - 1
    cx, cy = x + w // 2, y + h // 2
    t = max(1, min(w, h) // 4)  # stroke thickness
    if shape == "filled_square":
        cv2.rectangle(img, (x, y), (x1, y1), value, -1)
    elif shape == "disc":
        cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, value, -1)
    elif shape == "ring":
        cv2.ellipse(img, (cx, cy), (max(w // 2 - t // 2, 1), max(h // 2 - t // 2, 1)), 0, 0, 360, value, t)
    elif shape == "plus":
        cv2.rectangle(img, (x, cy - t // 2), (x1, cy + (t - 1) // 2), value, -1)
        cv2.rectangle(img, (cx - t // 2, y), (cx + (t - 1) // 2, y1), value, -1)
    elif shape == "cross":
        cv2.line(img, (x, y), (x1, y1), value, t)
        cv2.line(img, (x, y1), (x1, y), value, t)
    elif shape == "triangle_up":
        cv2.fillPoly(img, [np.array([(cx, y), (x, y1), (x1, y1)], np.int32)], value)
    elif shape == "triangle_down":
        cv2.fillPoly(img, [np.array([(x, y), (x1, y), (cx, y1)], np.int32)], value)
    elif shape == "horizontal_bar":
        cv2.rectangle(img, (x, cy - t), (x1, cy + t), value, -1)
    elif shape == "vertical_bar":
        cv2.rectangle(img, (cx - t, y), (cx + t, y1), value, -1)
    elif shape == "diamond":
        cv2.fillPoly(img, [np.array([(cx, y), (x1, cy), (cx, y1), (x, cy)], np.int32)], value)
    elif shape == "hollow_square":
        cv2.rectangle(img, (x, y), (x1, y1), value, t)
    elif shape == "four_dots":
        r = max(1, min(w, h) // 6)
        for px in (x + w // 4, x1 - w // 4):
            for py in (y + h // 4, y1 - h // 4):
                cv2.circle(img, (px, py), r, value, -1)
    elif shape == "l_shape":
        cv2.rectangle(img, (x, y), (x + t, y1), value, -1)
        cv2.rectangle(img, (x, y1 - t), (x1, y1), value, -1)
    elif shape == "wide_ellipse":
        cv2.ellipse(img, (cx, cy), (w // 2, max(h // 4, 1)), 0, 0, 360, value, -1)
    else:  # pragma: no cover - SHAPES and this function are kept in step
        raise ValueError(f"unknown shape {shape!r}")


def make_films(n, image_size, seed):
    """``n`` synthetic films with planted findings.

    Returns ``(images, labels, boxes)``: images uint8 (n, S, S) greyscale 0..255;
    labels int64 (n, 14) multi-hot in ``LABELS`` order; boxes int64 (14, 4), per
    label the (x, y, w, h) pixel box where its shape is drawn whenever present
    (the same place on every film). Every film carries label ``i % 14`` so small
    sets have positives for every label; other labels appear with probability
    ``POSITIVE_RATE``. Deterministic in ``seed``; no global generator is touched.
    """
    if n < 0:
        raise ValueError(f"n={n}: the number of films must be >= 0")
    rng = np.random.default_rng(seed)
    boxes = label_boxes(image_size)
    labels = (rng.random((n, NUM_LABELS)) < POSITIVE_RATE).astype(np.int64)
    labels[np.arange(n), np.arange(n) % NUM_LABELS] = 1
    yy, xx = np.mgrid[0:image_size, 0:image_size] / max(image_size - 1, 1)
    # a soft "chest" glow so the background is not flat
    glow = 50.0 * np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2))
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        film = 30.0 + glow + rng.normal(0.0, 8.0, (image_size, image_size))
        film = np.clip(film, 0, 255).astype(np.uint8)
        for k in np.flatnonzero(labels[i]):
            _draw(film, SHAPES[k], boxes[k], int(rng.integers(190, 256)))
        images[i] = film
    return images, labels, boxes


def write_synthetic_records(out, n_train, n_val, n_test, image_size, seed, shards_per_split=1, labels=LABELS):
    """Write synthetic films as real TFRecord shards + their manifest into ``out``.

    Splits with a count of 0 are left out. Each film is its own patient
    (``patient_id`` unique across splits), with random age 20..89, sex M/F and view
    PA/AP. ``split_method`` is ``"synthetic"``. ``labels``: the records' label set, a subset
    of NIH's findings (films still show every shape; only these labels are stored). Returns
    the ``Manifest``.
    """
    columns = [LABELS.index(name) for name in labels]  # ValueError for a name NIH does not have
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    rng = np.random.default_rng([seed, 1])
    splits = {}
    next_patient = 1
    train_ages = []
    for offset, (split, n) in enumerate(counts.items()):
        if n <= 0:
            continue
        images, planted, _ = make_films(n, image_size, [seed, offset])
        y = planted[:, columns]
        ages = rng.integers(20, 90, n)
        sexes = rng.choice(["M", "F"], n)
        views = rng.choice(["PA", "AP"], n)
        if split == "train":
            train_ages = ages
        n_shards = max(1, min(shards_per_split, n))
        names = [shard_name(split, i, n_shards) for i in range(n_shards)]
        writers = [tf.io.TFRecordWriter(str(out / name)) for name in names]
        try:
            for i in range(n):
                patient = next_patient + i
                example = serialize_example(
                    encode_png(images[i]), y[i].tolist(), f"{patient:08d}_000.png",
                    patient, int(ages[i]), str(sexes[i]), str(views[i]), 0)
                writers[i % n_shards].write(example)
        finally:
            for writer in writers:
                writer.close()
        next_patient += n
        splits[split] = manifest.Split(count=int(n), patients=int(n), shards=tuple(names),
                                       label_counts={label: int(c) for label, c in zip(labels, y.sum(axis=0))})
    if len(train_ages) == 0:
        train_ages = np.array([50.0])
    records = manifest.Manifest(
        labels=tuple(labels), image_size=int(image_size), splits=splits, seed=seed, split_method="synthetic",
        label_table_sha256=hashlib.sha256(f"synthetic:{seed}".encode()).hexdigest(),
        age_mean=float(np.mean(train_ages)), age_std=float(max(np.std(train_ages), 1.0)))
    manifest.write(out, records)
    return records
