"""``python -m cxr_tf.dicomweb --url URL --cursor FILE [--once] [--since YYYYMMDD] [--user USER
--password-env VAR | --token-env VAR] [--heatmaps]``: triage the chest radiographs a DICOMweb archive
holds and store a TID 1500 report (and Grad-CAM Parametric Maps) back in each film's study: QIDO-RS
for new CR/DX instances since the cursor, WADO-RS, STOW-RS (library:
``cxr_tf.inference.dicomweb``; see ``docs/conformance.md``). Polls every ``--poll`` seconds until
SIGTERM or Ctrl-C (``--once``: one pass, then stop). Exit code 1 when some results could not be built
or stored, 2 for a usage error."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import logging
import os
import signal
import sys
import threading

from cxr_tf import cli
from cxr_tf.inference.extras import require


def auth_from_args(parser, args):
    """None, ("basic", user, password) or ("bearer", token); secrets come from environment variables
    (a password on the command line would show in the process list)."""
    if args.token_env and args.user:
        cli.fail(parser, "--token-env and --user: choose bearer or basic authentication")
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            cli.fail(parser, f"--token-env {args.token_env}: that environment variable is not set")
        return ("bearer", token)
    if args.user:
        if not args.password_env or args.password_env not in os.environ:
            cli.fail(parser, "--user needs --password-env VAR naming a set environment variable")
        return ("basic", args.user, os.environ[args.password_env])
    return None


def main(argv=None):
    try:  # the extra first: without it, one line naming what to install, even for --help
        for module in ("dicomweb_client", "highdicom"):
            require(module, "dicom", "python -m cxr_tf.dicomweb")
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from cxr_tf.inference.dicomweb import DicomWebFrontEnd

    parser = cli.parser("dicomweb", __doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    parser.add_argument("--cursor", required=True, metavar="FILE",
                        help="cursor file: the films handled (created on first use)")
    parser.add_argument("--since", metavar="YYYYMMDD", help="a new cursor's first study date (default: today)")
    parser.add_argument("--once", action="store_true", help="one pass over what is new, then stop")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between QIDO-RS polls")
    parser.add_argument("--user", help="basic authentication user (password from --password-env)")
    parser.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    parser.add_argument("--token-env", metavar="VAR", help="environment variable holding a bearer token")
    cli.add_delivery_options(parser)
    cli.add_predictor_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    auth = auth_from_args(parser, args)
    predictor = cli.predictor_from_args(parser, args, caveats=True)
    try:
        front = DicomWebFrontEnd(predictor, args.url, args.cursor, since=args.since, auth=auth,
                                 heatmaps=args.heatmaps, heatmap_format=args.heatmap_format,
                                 keep_unsent=args.keep_unsent, retry_initial=args.retry_initial,
                                 retry_max=args.retry_max)
    except cli.USAGE_ERRORS as err:
        cli.fail(parser, err)
    if args.once:
        try:
            front.run_once()
        except Exception as err:  # noqa: BLE001 - the archive unreachable or refusing: one line, exit 1
            print(f"error: DICOMweb at {args.url}: {err}", file=sys.stderr)
            return 1
    else:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"cxr_tf DICOMweb front end polling {args.url} every {args.poll:g} s", flush=True)
        front.run(stop, args.poll)
    report = front.stop()
    print(f"stopped: triaged {report['triaged']}, not processed {report['not_processed']}, "
          f"failed {report['failed']}, unsent {len(report['unsent'])}", flush=True)
    return 1 if report["unsent"] or report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
