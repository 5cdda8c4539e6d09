"""``python -m cxr_tf.export --model RUN --format litert-int8``: a portable copy of a run
(library: ``cxr_tf.inference.export``; docs/deployment.md).

Formats: savedmodel (TF Serving; signatures serve and serve_bytes), litert, litert-int8
and onnx. Every export writes ``parity.json`` beside it (max |Δp| against model.keras on
the validation split, per-finding and macro AUC of both, size, CPU ms per film) and
warns when the macro AUC drops by more than 0.01. Exit code 2 for a usage error.
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import json
import sys

from cxr_tf import cli, runs
from cxr_tf.inference.export import FORMATS, ExportError, export_run


def build_parser():
    parser = cli.parser("export", "Export a trained run for TF Serving, LiteRT or ONNX with a parity report.")
    cli.add_run_option(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to export")
    parser.add_argument("--out", help="export folder (default RUN/export/<format>)")
    parser.add_argument("--records", help="records folder for the validation split (default: the run's config)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = export_run(runs.resolve_run_dir(args.model), args.format, out=args.out, records=args.records)
    except (ExportError, *cli.USAGE_ERRORS) as err:
        cli.fail(parser, err)
    summary = {k: report[k] for k in ("format", "folder", "size_bytes", "keras_size_bytes", "max_abs_diff",
                                      "macro_auc", "ms_per_film")}
    print(json.dumps(summary, indent=2))
    if report["warning"]:
        print(f"WARNING: {report['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
