"""Benchmark the TFRecord builder on real films.

Three measurements on the same films (page cache warmed first):

- decode limit: reading + decoding + area-resizing each film with OpenCV on one
  core (one thread) -- the raw cost the builder cannot avoid; the limit for the
  builder is ``cores x`` that rate;
- naive baseline: one process, PIL open, convert to grey, resize, PNG-encode,
  serialize and write each example in turn;
- the builder: ``cxr_tf.data.builder.build_records`` with all cores, into a temporary folder,
  end to end (table, split, plan, encode, write, manifest). ``--repeat N`` feeds it
  each film N times (symlinks under new names and patient ids) so that its fixed
  start-up costs weigh as little as on a real 112,120-film build; the two other
  rates are per film and measured once over the films.

The last line reads ``builder_vs_limit=<ratio> builder_vs_naive=<ratio>``.

    python tools/bench_build.py --data-dir /data/nih-sample [--labels CSV] [--image-size 256]

The machines here are shared: run it on a quiet machine, or read the figures as noisy.
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

    from cxr_tf.data.images import read_image, to_square  # noqa: PLC0415

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

    from cxr_tf.data.labels import LABELS  # noqa: PLC0415
    from cxr_tf.data.records import serialize_example  # noqa: PLC0415

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


def _cpu_seconds():
    """CPU seconds used by this process and its finished children."""
    import resource  # noqa: PLC0415

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def repeated_data_dir(table, repeat, folder):
    """A data folder holding every film of ``table`` ``repeat`` times: copy k of
    ``00000075_000.png`` is the symlink ``k00075_000.png`` with k on three digits, patient
    ``k00075`` (NIH patient ids stay below 10^5, so the names start with 000; copy 0 keeps
    them). Also used by bench_beam.py. Returns the path of its label table."""
    import csv  # noqa: PLC0415

    from cxr_tf.data.labels import LABELS  # noqa: PLC0415

    if not 1 <= repeat <= 999 or not all(name.startswith("000") for name in table["image_index"]):
        raise ValueError(f"--repeat must be 1..999 (films whose names start with 000), got {repeat}")
    images = Path(folder) / "images"
    images.mkdir(parents=True)
    rows = []
    for copy in range(repeat):
        for row in table.itertuples(index=False):
            name = f"{copy:03d}{row.image_index[3:]}"
            (images / name).symlink_to(Path(row.path).resolve())
            findings = "|".join(label for label in LABELS if getattr(row, label)) or "No Finding"
            rows.append([name, findings, row.follow_up, int(name[:8]), row.age, row.sex, row.view])
    labels = Path(folder) / "Data_Entry_2017.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                         "Patient Gender", "View Position"])
        writer.writerows(rows)
    return labels


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the TFRecord builder against a naive loop "
                                                 "and the single-core decode limit.")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of real NIH films (searched recursively)")
    parser.add_argument("--labels", type=Path, default=None, help="label table (default: found in --data-dir)")
    parser.add_argument("--image-size", type=int, default=256, help="output side in pixels (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="builder processes (default: all cores)")
    parser.add_argument("--repeat", type=int, default=4,
                        help="times the builder sees each film (1..9, default 4; see above)")
    args = parser.parse_args(argv)

    import tensorflow as tf  # noqa: F401, PLC0415 (imported before any timing: both writers need it)

    from cxr_tf.data.datasets import nih  # noqa: PLC0415
    from cxr_tf.data.builder import build_records, default_workers  # noqa: PLC0415

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
        data_dir = Path(tmp) / "films"
        repeated = repeated_data_dir(matched, args.repeat, data_dir)
        before = _cpu_seconds()
        start = time.perf_counter()
        records = build_records(data_dir=data_dir, labels=repeated, out=Path(tmp) / "records",
                                image_size=args.image_size, workers=cores, progress=False, log=lambda *_: None)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - before
    built = sum(split.count for split in records.splits.values())
    builder = built / seconds
    print(f"builder      : {builder:8.1f} images/s end to end ({built} films in {seconds:.2f} s, "
          f"encoding phase alone {records.build['images_per_s']} images/s)")
    print(f"builder CPU  : {cpu:.1f} s over {seconds:.1f} s wall = {cpu / seconds:.2f} of {cores} cores busy "
          f"(below {cores}: the processes waited for cores other programs held)")
    print(f"builder_vs_limit={builder / limit:.2f} builder_vs_naive={builder / naive:.2f}")


if __name__ == "__main__":
    main()
