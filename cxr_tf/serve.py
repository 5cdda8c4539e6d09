"""``python -m cxr_tf.serve [--model RUN] [--host 127.0.0.1 --port 8000]``: the triage web
service, a page and a JSON API (library: ``cxr_tf.inference.service.create_app``; needs the
``serve`` extra). See ``docs/service.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import logging
import sys

from cxr_tf import cli
from cxr_tf.inference.extras import require


def main(argv=None):
    try:  # the extra first: without it, one line naming what to install, even for --help
        uvicorn = require("uvicorn", "serve", "python -m cxr_tf.serve")
        for module in ("fastapi", "python_multipart"):
            require(module, "serve", "python -m cxr_tf.serve")
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from cxr_tf.inference.service import DEFAULT_MAX_FILES, DEFAULT_MAX_QUEUE, DEFAULT_MAX_UPLOAD_MB, create_app
    from cxr_tf.inference.uploads import DEFAULT_BODY_MIN_RATE, DEFAULT_BODY_TIMEOUT_S, BodyTiming

    parser = cli.parser("serve", "The triage web service: a page and a JSON API for chest films.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB, help="largest film, MB")
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="films per request")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="prediction requests admitted at once, counted once their body has arrived; "
                             "more get 503 with Retry-After")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="S",
                        help="longest wait for the next bytes of a request body; a body that stalls gets 408")
    parser.add_argument("--body-min-rate", type=float, default=DEFAULT_BODY_MIN_RATE / 1024, metavar="KB/S",
                        help="average rate a body must keep after its first --body-timeout seconds (else 408)")
    parser.add_argument("--proxy", action="append", default=[], metavar="ADDR",
                        help="a reverse proxy whose X-Forwarded-For/-Proto headers are trusted (repeat for "
                             "several; IP or CIDR). Default: none, the headers are ignored")
    cli.add_predictor_options(parser)
    args = parser.parse_args(argv)
    try:
        timing = BodyTiming(args.body_timeout, args.body_min_rate * 1024)
    except ValueError as err:
        cli.fail(parser, err)
    predictor = cli.predictor_from_args(parser, args, caveats=True)
    app = create_app(predictor, args.max_upload_mb, args.max_files, args.max_queue, timing)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=bool(args.proxy),
                forwarded_allow_ips=args.proxy or None)


if __name__ == "__main__":
    sys.exit(main())
