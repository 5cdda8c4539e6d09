"""``python -m cxr_tf.export --model RUN --format litert-int8``: a portable copy of a run
(library: ``cxr_tf.inference.export``; docs/deployment.md).

Formats: savedmodel (TF Serving; signatures serve and serve_bytes), litert, litert-int8
and onnx. Every export writes ``parity.json`` beside it (max |Δp| against model.keras on
the validation split, per-finding and macro AUC of both, size, CPU ms per film) and
warns when the macro AUC drops by more than 0.01. Exit code 2 for a usage error.
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse
import json
import sys

from cxr_tf.inference.export import FORMATS, ExportError, export_run


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cxr_tf.export",
                                     description="Export a trained run for TF Serving, LiteRT or ONNX with a parity report.")
    parser.add_argument("--model", required=True, help="run folder of cxr_tf.training.trainer")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", help="export folder (default RUN/export/<format>)")
    parser.add_argument("--records", help="records folder for the validation split (default: the run's config)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        report = export_run(args.model, args.format, out=args.out, records=args.records)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("format", "folder", "size_bytes", "keras_size_bytes", "max_abs_diff",
                                      "macro_auc", "ms_per_film")}
    print(json.dumps(summary, indent=2))
    if report["warning"]:
        print(f"WARNING: {report['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
