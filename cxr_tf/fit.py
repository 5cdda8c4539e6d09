"""``python -m cxr_tf.fit --arch fusion``: train one run (library: ``cxr_tf.training.train``).

Reads the architecture's config from ``pipelines/`` (``cxr_tf.training.config``); any field
can be overridden with the named flags or ``--set KEY=VALUE``. See ``docs/training.md``.
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse
import sys
from pathlib import Path

from cxr_tf import cli
from cxr_tf.training import config as config_lib
from cxr_tf.training.trainer import train


def _epochs_arg(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or N1,N2 (one per phase)") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: epochs must be >= 0")
    return values[0] if len(values) == 1 else values


def build_parser():
    parser = cli.parser("fit", "Train a chest X-ray model from pipelines/<arch>.yaml; any field can be overridden "
                               "(a flag left out takes the pipeline's value).")
    parser.add_argument("--arch", help=f"architecture: pipelines/<arch>.yaml ({', '.join(config_lib.available_archs())})")
    parser.add_argument("--config", type=Path, help="a YAML config (any subset of keys; its arch picks the base)")
    parser.add_argument("--epochs", type=_epochs_arg, help="epochs of every phase, or N1,N2 per phase")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--image-size", type=int, help="side in pixels (<= the records' size)")
    parser.add_argument("--records", help="records folder (tools/build_tfrecords.py output), or several "
                                          "comma-separated: trained on together over their shared vocabulary")
    parser.add_argument("--ratio", help="with several records folders: sampling proportions, e.g. 1,1 "
                                        "(default: their sizes)")
    parser.add_argument("--findings", nargs="+", metavar="FINDING",
                        help="train on these findings (common names, docs/datasets.md; default: every finding "
                             "the records label)")
    parser.add_argument("--out", help="folder that receives the run folder (default saved_models)")
    parser.add_argument("--weights", help="imagenet | none | path of a weights file")
    parser.add_argument("--init-from", metavar="RUN",
                        help="fine-tune from a run (fit's or import_weights'): its weights; findings it knows keep "
                             "their head units, new ones get fresh units (default arch: the run's)")
    parser.add_argument("--loss", help=f"{' | '.join(config_lib.LOSSES)}")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", nargs="?", const="true",
                        help="on (float16 on GPU, bfloat16 on CPU), off, mixed_float16 or mixed_bfloat16")
    parser.add_argument("--strategy", help=f"{' | '.join(config_lib.STRATEGIES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. --set loss.gamma=1.5 --set phases.1.learning_rate=3e-5")
    parser.add_argument("--run-name", help="run folder name under --out; restarting with it resumes that run")
    parser.add_argument("--no-resume", action="store_true",
                        help="start a new run even if an unfinished run of the same config exists")
    return parser


def config_from_args(args):
    """The validated config for parsed command-line arguments."""
    overrides = config_lib.parse_assignments(args.set)
    named = {"batch_size": args.batch_size, "image_size": args.image_size, "records": args.records,
             "out": args.out, "weights": args.weights, "loss.name": args.loss, "seed": args.seed,
             "strategy": args.strategy, "records_ratio": args.ratio, "findings": args.findings}
    if args.mixed_precision is not None:
        value = args.mixed_precision.lower()
        named["mixed_precision"] = {"on": True, "true": True, "off": False, "false": False}.get(value, value)
    arch = args.arch
    if args.init_from is not None:
        named["init_from"] = args.init_from
        if args.weights is None:
            named["weights"] = "none"  # the run's weights replace the architecture's
        if arch is None and args.config is None:
            from cxr_tf import runs

            arch = runs.read_config(runs.resolve_run_dir(args.init_from)).get("arch")
    overrides.update({k: v for k, v in named.items() if v is not None})
    return config_lib.load_config(arch=arch, config_file=args.config, overrides=overrides,
                                  epochs=args.epochs)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        train(config, run_name=args.run_name, resume=not args.no_resume)
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as err:  # incl. damaged records
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
