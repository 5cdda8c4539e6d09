"""``python -m cxr_tf.build`` (or ``python tools/build_tfrecords.py`` in a checkout): build
TFRecord shards + their manifest from a chest X-ray release: NIH ChestX-ray14 (the default),
CheXpert, MIMIC-CXR-JPG, PadChest or VinDr-CXR (library: ``cxr_tf.data.builder.build_records``;
docs/datasets.md). With no flags it builds the embedded sample (150 real NIH films, 128 px)
into ``records/``. Re-running after an interrupted build resumes it.

    python -m cxr_tf.build --data-dir /data/nih --out records --image-size 256
    python -m cxr_tf.build --dataset chexpert --data-dir /data/CheXpert-v1.0-small --out chexpert_records

``--runner beam`` builds the same records on Apache Beam's DirectRunner (``[beam]`` extra), and
``--runner DataflowRunner|FlinkRunner|SparkRunner|...`` on a cluster; every option this command
does not know is passed to Beam as a pipeline option (``--project=p --region=r``). docs/beam.md.
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import sys
import warnings
from pathlib import Path

from cxr_tf import cli

# cxr_tf.data.builder is imported inside main(), so that the spawned decoding workers, which
# re-import the main module, stay free of TensorFlow.


def _folder(text):
    """A local folder as a Path; a URL (gs://, s3://) as given (a Path would fold its "//")."""
    return text if "://" in text else Path(text)


def _release_options():
    """{option: (Option, [datasets declaring it])} over every adapter's ``OPTIONS``."""
    from cxr_tf.data import datasets

    found = {}
    for name in datasets.DATASETS:
        for option, spec in datasets.get(name).OPTIONS.items():
            found.setdefault(option, (spec, []))[1].append(name)
    return found


def parse_args(argv=None):
    from cxr_tf.data.datasets import DATASETS, DEFAULT
    from cxr_tf.data.datasets.base import UNCERTAIN_POLICIES

    parser = cli.parser(
        "build", "Build sharded TFRecords and their manifest from a chest X-ray release "
                    "(no flags: the embedded 150-film NIH sample into records/).")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default=DEFAULT,
                        help=f"the release in --data-dir (default {DEFAULT}; docs/datasets.md)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the release's folder, searched recursively for its films (default: the embedded "
                             "NIH sample)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="the release's main label table when it is not in --data-dir (NIH: "
                             "Data_Entry_2017*.csv*)")
    parser.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default="ignore",
                        help="what an uncertain label (CheXpert, MIMIC-CXR: -1.0) becomes: ignore = missing "
                             "(default), ones = positive, zeros = negative")
    for option, (spec, owners) in _release_options().items():  # each release's own options
        parser.add_argument(f"--{option}", choices=spec.values, default=None,
                            help=f"{', '.join(owners)}: {spec.help}")
    parser.add_argument("--laterals", action="store_true",
                        help="keep lateral views (default: frontal PA/AP films only; laterals are listed)")
    parser.add_argument("--official-lists", type=Path, default=None,
                        help="folder with train_val_list.txt and test_list.txt (default: --data-dir)")
    parser.add_argument("--out", type=_folder, default=Path("records"),
                        help="output folder (default: records; with a Beam runner also gs://... or s3://...)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square films in pixels (default 256)")
    parser.add_argument("--split", choices=("stratified", "official"), default="stratified",
                        help="stratified: patient-grouped iterative stratification (default); "
                             "official: the release's split (NIH: its lists), val carved from train by "
                             "patient when it has none")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="test share for --split stratified (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and shard order (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores; 1 decodes in the main process)")
    parser.add_argument("--shard-size-mb", type=float, default=128, help="target shard size in MB (default 128)")
    parser.add_argument("--findings", nargs="+", metavar="FINDING",
                        help="label set of the records: these findings of the release, in this order "
                             "(default: all that cxr_tf/resources/findings.csv maps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    beam = parser.add_argument_group("Apache Beam (docs/beam.md)")
    beam.add_argument("--runner", default="local", metavar="RUNNER",
                      help="local: this machine's process pool (default); beam: Beam's DirectRunner here "
                           "(--workers processes); or a Beam runner: DataflowRunner, FlinkRunner, SparkRunner, "
                           "PortableRunner, PrismRunner. Options this command does not know go to Beam "
                           "(--project=p --region=r --temp_location=gs://...); --out may then be gs:// or s3://")
    beam.add_argument("--films-url", metavar="URL",
                      help="with a Beam runner: where the workers read --data-dir's films (a bucket the folder "
                           "is a mount or a copy of, e.g. gs://bucket/nih; default: the paths found in --data-dir)")
    args, beam_options = parser.parse_known_args(argv)
    if beam_options and args.runner == "local":
        parser.error(f"unrecognized arguments: {' '.join(beam_options)} (Beam pipeline options need --runner beam "
                     "or another Beam runner)")
    args.beam_options = beam_options
    return args


def main(argv=None):
    args = parse_args(argv)
    from cxr_tf.data.builder import BuildSettings, build_records
    from cxr_tf.data.splits import SplitWarning

    options = {name: getattr(args, name) for name in _release_options() if getattr(args, name) is not None}
    settings = BuildSettings(dataset=args.dataset, data_dir=args.data_dir, labels=args.labels,
                             official_lists=args.official_lists, uncertain=args.uncertain, laterals=args.laterals,
                             options=options, findings=args.findings, image_size=args.image_size, split=args.split,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                             shard_size_mb=args.shard_size_mb)
    try:
        with warnings.catch_warnings():  # the closing summary prints them as "warning: ..." lines
            warnings.simplefilter("ignore", SplitWarning)
            if args.runner == "local":
                build_records(settings, out=args.out, workers=args.workers, progress=not args.no_progress)
            else:
                _build_on_beam(args, settings)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _build_on_beam(args, settings):
    from cxr_tf.data import beam_build
    from cxr_tf.data.builder import default_workers

    if args.runner not in ("beam", *beam_build.RUNNERS):
        raise ValueError(f"--runner {args.runner}: expected local, beam or a Beam runner "
                         f"({', '.join(beam_build.RUNNERS)})")
    workers = args.workers if args.workers is not None else default_workers()
    options = beam_build.pipeline_options(args.runner, workers, args.beam_options)
    beam_build.build_records(settings, out=str(args.out), options=options, films_url=args.films_url)


if __name__ == "__main__":
    sys.exit(main())
