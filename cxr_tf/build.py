"""``python -m cxr_tf.build`` (or ``python tools/build_tfrecords.py`` in a checkout): build
TFRecord shards + manifest.json from the NIH ChestX-ray14 release (library:
``cxr_tf.data.builder.build_records``). With no flags it builds the embedded sample (150 real
NIH films, 128 px) into ``records/``. Re-running after an interrupted build resumes it.

    python -m cxr_tf.build --data-dir /data/nih --out records --image-size 256
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse
import sys
from pathlib import Path

# cxr_tf.data.builder is imported inside main(), so that the spawned decoding workers, which
# re-import the main module, stay free of TensorFlow.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Build sharded TFRecords and manifest.json from NIH ChestX-ray14 "
                    "(no flags: the embedded 150-film sample into records/).")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder searched recursively for the PNG films (default: the embedded sample)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label table CSV (.csv or .csv.gz; default: Data_Entry_2017*.csv* in --data-dir)")
    parser.add_argument("--official-lists", type=Path, default=None,
                        help="folder with train_val_list.txt and test_list.txt (default: --data-dir)")
    parser.add_argument("--out", type=Path, default=Path("records"), help="output folder (default: records)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square films in pixels (default 256)")
    parser.add_argument("--split", choices=("stratified", "official"), default="stratified",
                        help="stratified: patient-grouped iterative stratification (default); "
                             "official: the NIH lists, val carved from train_val by patient")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="test share for --split stratified (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and shard order (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores; 1 decodes in the main process)")
    parser.add_argument("--shard-size-mb", type=float, default=128, help="target shard size in MB (default 128)")
    parser.add_argument("--findings", nargs="+", metavar="FINDING",
                        help="label set of the records: these NIH findings, in this order (default: all 14)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from cxr_tf.data.builder import build_records  

    try:
        build_records(data_dir=args.data_dir, labels=args.labels, out=args.out, image_size=args.image_size,
                      split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                      seed=args.seed, workers=args.workers, shard_size_mb=args.shard_size_mb,
                      official_lists=args.official_lists, findings=args.findings, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
