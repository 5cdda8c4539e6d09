"""What every command's command line shares, declared once: the parser (usage name
``python -m cxr_tf.<command>`` for the module and its console script alike, defaults shown in
``--help``), the run option (``--model``), the predictor options of the commands that triage
films (``predict``, ``explain``, ``serve``, ``dicom_node``), and the one-line usage failure
(exit code 2). Commands import this module; the library never does."""

import argparse
import sys

RUN_HELP = ("run folder of `python -m cxr_tf.fit`, its `latest` file or a path inside a run "
            "(default: the run that saved_models/latest names)")
USAGE_ERRORS = (ValueError, FileNotFoundError, ImportError)
"""What a command turns into one line and exit 2: a bad value, a missing file or run, a missing
extra (``cxr_tf.inference.extras.MissingExtra``, an ImportError naming what to install)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it has none (None, False) or its help
    already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(command, description):
    """The argument parser of ``python -m cxr_tf.<command>`` (and its console script)."""
    return argparse.ArgumentParser(prog=f"python -m cxr_tf.{command}", description=description,
                                   formatter_class=HelpFormatter)


def add_run_option(parser, required=False):
    """``--model``: the run every command that reads one resolves with ``cxr_tf.runs.resolve_run_dir``."""
    parser.add_argument("--model", required=required, metavar="RUN", help=RUN_HELP)


def add_predictor_options(parser):
    """The run and the options of ``cxr_tf.inference.predictor.Predictor``, with its defaults."""
    from cxr_tf.inference.evidence import DEFAULT_AUC_FLOOR
    from cxr_tf.inference.export import BACKENDS
    from cxr_tf.inference.triage import DEFAULT_BORDERLINE_K, DEFAULT_CRITICAL, DEFAULT_UNCERTAINTY_THRESHOLD
    from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES

    add_run_option(parser)
    group = parser.add_argument_group("predictor")
    group.add_argument("--backend", choices=BACKENDS, default="keras",
                       help="keras (model.keras), litert or onnx (an export of `python -m cxr_tf.export`)")
    group.add_argument("--export", metavar="DIR", help="export folder for --backend litert|onnx (default: "
                       "RUN/export/litert-int8, else RUN/export/litert; RUN/export/onnx)")
    group.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="Monte-Carlo dropout passes per film")
    group.add_argument("--seed", type=int, help="an extra integer mixed into every film's MC seed (other draws; "
                       "the draws are repeatable either way)")
    group.add_argument("--batch-size", type=int, default=16, help="films per forward pass")
    group.add_argument("--uncertainty-threshold", type=float, default=DEFAULT_UNCERTAINTY_THRESHOLD,
                       help="MC standard deviation marking a finding uncertain")
    group.add_argument("--critical", nargs="+", default=list(DEFAULT_CRITICAL), metavar="FINDING",
                       help="findings that may make a film urgent; after the films when a command takes films "
                            f"(default: {' '.join(DEFAULT_CRITICAL)})")
    group.add_argument("--borderline-k", type=float, default=DEFAULT_BORDERLINE_K,
                       help="a finding with |p - threshold| < k x MC std is borderline: review, never urgent")
    group.add_argument("--auc-floor", type=float, default=DEFAULT_AUC_FLOOR,
                       help="validation AUC the run (macro) and a critical finding (its own) must reach to call a "
                            "film urgent (docs/triage.md)")
    group.add_argument("--no-gate", dest="gate", action="store_false",
                       help="do not screen films with the input gate (docs/gate.md); every result then says so")


def add_delivery_options(parser):
    """What the DICOM node and the DICOMweb front end share: heatmaps, what is kept when results
    cannot be delivered, the retry back-off, and the log level."""
    parser.add_argument("--heatmaps", action="store_true", help="also deliver Grad-CAM maps of positive findings")
    parser.add_argument("--heatmap-format", choices=("heatmap-pm", "heatmap-sc"), default="heatmap-pm",
                        help="heatmap-pm: DICOM Parametric Maps (float values); heatmap-sc: Secondary Captures "
                             "(a burned-in overlay) for viewers that cannot show Parametric Maps")
    parser.add_argument("--keep-unsent", metavar="DIR",
                        help="on stop, write results that could not be delivered here (else only logged)")
    parser.add_argument("--retry-initial", type=float, default=1.0, help="first retry delay, s")
    parser.add_argument("--retry-max", type=float, default=60.0, help="longest retry delay, s")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def predictor_from_args(parser, args, caveats=False):
    """The Predictor the options of ``add_predictor_options`` describe; a bad run, value or
    missing extra is one line and exit 2. Its notes (and, with ``caveats``, for commands that
    do not print results, the run's caveats) are printed once to standard error."""
    from cxr_tf.inference.predictor import Predictor

    try:
        predictor = Predictor(args.model, **predictor_options(args))
    except USAGE_ERRORS as err:
        fail(parser, err)
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)
    for caveat in predictor.evidence["caveats"] if caveats else ():
        print(f"caveat: {caveat}", file=sys.stderr)
    return predictor


def predictor_options(args):
    """The ``Predictor`` keyword arguments the options of ``add_predictor_options`` give (all but the run)."""
    return dict(samples=args.samples, uncertainty_threshold=args.uncertainty_threshold, critical=tuple(args.critical),
                batch_size=args.batch_size, seed=args.seed, borderline_k=args.borderline_k, auc_floor=args.auc_floor,
                backend=args.backend, export=args.export, gate=args.gate)


def fail(parser, err):
    """Exit 2 with ``error: <err>``: the one line every usage failure gives."""
    parser.exit(2, f"error: {err}\n")
