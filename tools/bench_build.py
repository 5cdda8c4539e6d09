"""Benchmark the TFRecord builder on real films.

Three measurements on the same films (page cache warmed first):

- decode limit: reading + decoding + area-resizing each film with OpenCV on one
  core (one thread) -- the raw cost the builder cannot avoid; the limit for the
  builder is ``cores x`` that rate;
- naive baseline: one process, PIL open, convert to grey, resize, PNG-encode,
  serialize and write each example in turn;
- the builder: ``cxr_tf.build.build_records`` with all cores, into a temporary folder.

The last line reads ``builder_vs_limit=<ratio> builder_vs_naive=<ratio>``.

    python tools/bench_build.py --data-dir ../shared/data/nih-sample [--labels CSV] [--image-size 256]
"""

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decode_limit(paths, image_size):
    """Films/s of read + decode + resize on one core (OpenCV, one thread)."""
    import cv2  # noqa: PLC0415

    from cxr_tf.images import read_image, to_square  # noqa: PLC0415

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        start = time.perf_counter()
        for path in paths:
            to_square(read_image(path), image_size)
        return len(paths) / (time.perf_counter() - start)
    finally:
        cv2.setNumThreads(threads)


def naive_baseline(paths, table, image_size, out):
    """Films/s of a one-process PIL loop writing one TFRecord file."""
    import tensorflow as tf  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from cxr_tf.labels import LABELS  # noqa: PLC0415
    from cxr_tf.records import serialize_example  # noqa: PLC0415

    rows = table.set_index("image_index")
    start = time.perf_counter()
    with tf.io.TFRecordWriter(str(out)) as writer:
        for path in paths:
            image = Image.open(path).convert("L").resize((image_size, image_size), Image.Resampling.BOX)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            row = rows.loc[Path(path).name]
            writer.write(serialize_example(buffer.getvalue(), row[list(LABELS)].to_numpy(int), Path(path).name,
                                           int(row["patient_id"]), int(row["age"]), row["sex"], row["view"],
                                           int(row["follow_up"])))
    return len(paths) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the TFRecord builder against a naive loop "
                                                 "and the single-core decode limit.")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of real NIH films (searched recursively)")
    parser.add_argument("--labels", type=Path, default=None, help="label table (default: found in --data-dir)")
    parser.add_argument("--image-size", type=int, default=256, help="output side in pixels (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="builder processes (default: all cores)")
    args = parser.parse_args(argv)

    import tensorflow as tf  # noqa: F401, PLC0415 (imported before any timing: both writers need it)

    from cxr_tf import nih  # noqa: PLC0415
    from cxr_tf.build import build_records, default_workers  # noqa: PLC0415

    labels = args.labels or nih.find_label_table(args.data_dir)
    table = nih.read_label_table(labels)
    matched = nih.match_files(table, args.data_dir).table
    paths = [str(p) for p in matched["path"]]
    cores = args.workers or default_workers()
    for path in paths:  # warm the page cache so that every measurement reads from memory
        Path(path).read_bytes()
    print(f"{len(paths)} films from {args.data_dir}, {args.image_size} px, {cores} cores")

    single = decode_limit(paths, args.image_size)
    limit = cores * single
    print(f"decode limit : {single:8.1f} images/s on one core -> {limit:8.1f} images/s on {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        naive = naive_baseline(paths, matched, args.image_size, Path(tmp) / "naive.tfrecord")
        print(f"naive (PIL)  : {naive:8.1f} images/s (one process)")
        start = time.perf_counter()
        manifest = build_records(data_dir=args.data_dir, labels=labels, out=Path(tmp) / "records",
                                 image_size=args.image_size, workers=cores, progress=False, log=lambda *_: None)
        seconds = time.perf_counter() - start
    built = sum(s["num_examples"] for s in manifest["splits"].values())
    builder = built / seconds
    print(f"builder      : {builder:8.1f} images/s end to end ({built} films in {seconds:.2f} s, "
          f"encoding phase alone {manifest['build']['images_per_s']} images/s)")
    print(f"builder_vs_limit={builder / limit:.2f} builder_vs_naive={builder / naive:.2f}")


if __name__ == "__main__":
    main()
