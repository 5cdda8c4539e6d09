"""``python -m cxr_tf.dicom_node --destination AET@HOST:PORT (--spool DIR | --no-spool) [--allow
AET[@HOST] ... --max-associations N --model RUN --aet CXR_TF --host 127.0.0.1 --port PORT
--fhir-out DIR --heatmaps [--heatmap-format heatmap-sc]]``: a DICOM Storage SCP that triages chest
radiographs as they arrive and sends a TID 1500 Structured Report (and Grad-CAM Parametric Maps) to
the destination (library: ``cxr_tf.inference.dicom_node``; see ``docs/integration.md``). Stops on
SIGTERM or Ctrl-C after finishing what it holds; exit code 1 when some results could not be built
or delivered, 2 for a usage error."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import logging
import signal
import sys
import threading

from cxr_tf import cli
from cxr_tf.inference.extras import require


def main(argv=None):
    try:  # the extra first: without it, one line naming what to install, even for --help
        require("pynetdicom", "dicom", "python -m cxr_tf.dicom_node")
        require("highdicom", "dicom", "python -m cxr_tf.dicom_node")
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from cxr_tf.inference.dicom_node import Destination, DicomNode

    parser = cli.parser("dicom_node", __doc__.split("\n\n")[0])
    parser.add_argument("--aet", default="CXR_TF", help="our AE title")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=11112, help="port to listen on")
    parser.add_argument("--destination", required=True, metavar="AET@HOST:PORT", help="where SRs are sent")
    parser.add_argument("--fhir-out", metavar="DIR", help="also write a FHIR Bundle per film here")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--spool", metavar="DIR",
                       help="durable inbox and outbox (patient data at rest, 0700/0600): a film is acknowledged "
                            "once it is on disk, and a restart after a crash resumes what was left")
    where.add_argument("--no-spool", action="store_true",
                       help="keep films and results in memory: a film is acknowledged only once its report "
                            "exists, and a crash loses the reports not yet delivered")
    parser.add_argument("--allow", action="append", default=[], metavar="AET[@HOST]",
                        help="a calling AE title (and host address) allowed to send films; repeat it; others "
                             "are rejected (calling AE title not recognised). Default: any caller")
    parser.add_argument("--max-associations", type=int, default=10, metavar="N",
                        help="associations served at once; more are rejected as 'local limit exceeded' "
                             "(transient: senders retry). Default 10")
    cli.add_delivery_options(parser)
    cli.add_predictor_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it logs every PDU at INFO
    try:
        destination = Destination.parse(args.destination)
    except ValueError as err:
        cli.fail(parser, err)
    predictor = cli.predictor_from_args(parser, args, caveats=True)
    try:
        node = DicomNode(predictor, aet=args.aet, host=args.host, port=args.port, destination=destination,
                         fhir_out=args.fhir_out, heatmaps=args.heatmaps, heatmap_format=args.heatmap_format,
                         keep_unsent=args.keep_unsent, spool=args.spool, allow=args.allow,
                         max_associations=args.max_associations,
                         retry_initial=args.retry_initial, retry_max=args.retry_max)
        node.start()
    except (*cli.USAGE_ERRORS, OSError) as err:
        cli.fail(parser, err)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"cxr_tf DICOM node {args.aet} listening on {args.host}:{args.port}", flush=True)
    stop.wait()
    report = node.stop()
    print(f"stopped: triaged {report['triaged']}, sent {report['sent']}, refused {report['refused']}, "
          f"failed {report['failed']}, unsent {len(report['unsent'])}", flush=True)
    return 1 if report["unsent"] or report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
