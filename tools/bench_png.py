"""Compare PNG encodings for the records' films: size and decode speed, side by side.

    python tools/bench_png.py --data-dir DIR [--image-size 224] [--films 110] [--repeats 3]

Takes up to ``--films`` films from DIR, squares and resizes them as the builder does
(``cxr_tf.data.images.to_square``), encodes each with every variant below, checks that
every variant decodes to the same pixels, and prints per variant the mean KiB per
film and the images/s of ``tf.io.decode_png`` in a parallel ``tf.data`` map (as in
``cxr_tf.data.pipeline``), best of ``--repeats`` rounds, each round measuring every variant.
``encode_png`` is what ``tools/build_tfrecords.py`` writes; decoding the shards is
what bounds the training pipeline on a CPU host (``tools/bench_input.py``).
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from bench_input import best_of_rounds  # tools/ is on sys.path when this runs as a script
from cxr_tf.data.images import encode_png, read_image, to_square

HUFFMAN = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]


def variants():
    """{name: encode(uint8 image) -> PNG bytes}; ``encode_png`` first."""
    def cv2_png(params):
        return lambda image: cv2.imencode(".png", image, params)[1].tobytes()

    out = {"encode_png (records)": encode_png,
           "huffman, adaptive filters": cv2_png(HUFFMAN),
           "zlib level 1, adaptive filters": cv2_png([cv2.IMWRITE_PNG_COMPRESSION, 1,
                                                      cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT]),
           "stored (level 0)": cv2_png([cv2.IMWRITE_PNG_COMPRESSION, 0])}
    for name in ("NONE", "SUB", "AVG", "PAETH"):  # UP + Huffman is encode_png
        out[f"huffman, {name.lower()} filter"] = cv2_png(
            HUFFMAN + [cv2.IMWRITE_PNG_FILTER, getattr(cv2, f"IMWRITE_PNG_FILTER_{name}")])
    return out


def decode_rate(pngs, count, batch=64):
    """images/s of decoding ``count`` PNGs (cycled) in a parallel tf.data map, taken in
    batches (one Python step per film would cost as much as the decode)."""
    ds = (tf.data.Dataset.from_tensor_slices(pngs).cache().repeat()
          .map(lambda png: tf.io.decode_png(png, channels=1), num_parallel_calls=tf.data.AUTOTUNE,
               deterministic=False)
          .batch(batch).prefetch(tf.data.AUTOTUNE))
    it = iter(ds)
    for _ in range(5):  # warm up: threads started, cache filled
        next(it)
    steps = max(1, count // batch)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="folder with PNG films")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--films", type=int, default=110, help="films to take from --data-dir")
    parser.add_argument("--decodes", type=int, default=4000, help="timed decodes per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    paths = sorted(args.data_dir.rglob("*.png"))[:args.films]
    if not paths:
        parser.error(f"no .png files under {args.data_dir}")
    films = [to_square(read_image(p), args.image_size) for p in paths]
    encoded = {}
    for name, encode in variants().items():
        pngs = [encode(film) for film in films]
        for png, film, path in zip(pngs, films, paths):
            if not np.array_equal(tf.io.decode_png(png, channels=1).numpy()[..., 0], film):
                raise SystemExit(f"{name}: {path.name} does not decode to its pixels")
        encoded[name] = pngs
    best = best_of_rounds({name: (lambda pngs=pngs: decode_rate(pngs, args.decodes))
                           for name, pngs in encoded.items()}, args.repeats)
    print(f"{len(films)} films at {args.image_size} px, decode_png in tf.data, best of {args.repeats}")
    size = {name: np.mean([len(p) for p in pngs]) for name, pngs in encoded.items()}
    ours = "encode_png (records)"
    for name in encoded:
        print(f"{name:32s} {size[name] / 1024:6.1f} KiB/film  {best[name]:8.0f} images/s  "
              f"size x{size[name] / size[ours]:.2f}  decode x{best[name] / best[ours]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
