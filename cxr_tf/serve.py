"""``python -m cxr_tf.serve --model RUN_DIR [--host 127.0.0.1 --port 8000]``: the triage web
service (library: ``cxr_tf.inference.service.create_app``). See ``docs/service.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse

from cxr_tf.inference.evidence import DEFAULT_AUC_FLOOR
from cxr_tf.inference.service import DEFAULT_MAX_FILES, DEFAULT_MAX_QUEUE, DEFAULT_MAX_UPLOAD_MB
from cxr_tf.inference.triage import DEFAULT_BORDERLINE_K


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cxr_tf.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="run folder of `cxr_tf.training.trainer` (default: the one saved_models/latest names)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--samples", type=int, default=25, help="Monte-Carlo dropout passes per film")
    parser.add_argument("--borderline-k", type=float, default=DEFAULT_BORDERLINE_K,
                        help="|p - threshold| < k x MC std is borderline: review, never urgent "
                             f"(default {DEFAULT_BORDERLINE_K:g})")
    parser.add_argument("--auc-floor", type=float, default=DEFAULT_AUC_FLOOR,
                        help=f"validation AUC needed to call a film urgent (default {DEFAULT_AUC_FLOOR:.2f}; "
                             "docs/triage.md)")
    parser.add_argument("--backend", choices=("keras", "litert", "onnx"), default="keras",
                        help="keras (model.keras, default), litert or onnx (an export of `python -m cxr_tf.export`)")
    parser.add_argument("--export", metavar="DIR", help="export folder for --backend litert|onnx (default under RUN/export/)")
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB)
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES)
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="prediction requests admitted at once; more get 503 with Retry-After")
    args = parser.parse_args(argv)

    import uvicorn

    from cxr_tf.inference.predictor import Predictor
    from cxr_tf.inference.service import create_app

    try:
        predictor = Predictor(args.model, samples=args.samples, borderline_k=args.borderline_k,
                              auc_floor=args.auc_floor, backend=args.backend, export=args.export)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    app = create_app(predictor, args.max_upload_mb, args.max_files, args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=True)


if __name__ == "__main__":
    main()
