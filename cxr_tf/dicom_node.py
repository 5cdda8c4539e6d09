"""``python -m cxr_tf.dicom_node --model RUN --aet CXR_TF --host 127.0.0.1 --port PORT
--destination AET@HOST:PORT [--fhir-out DIR] [--heatmaps]``: a DICOM Storage SCP that triages
chest radiographs as they arrive and sends a Structured Report (and Grad-CAM Secondary
Captures) to the destination (library: ``cxr_tf.inference.dicom_node``; see
``docs/integration.md``). Stops on SIGTERM or Ctrl-C after finishing what it holds; exit
code 1 when some results could not be built or delivered, 2 for a usage error."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse
import logging
import signal
import sys
import threading

from cxr_tf.inference.dicom_node import Destination, DicomNode
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cxr_tf.dicom_node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder (default: the one saved_models/latest names)")
    parser.add_argument("--aet", default="CXR_TF", help="our AE title (default CXR_TF)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112)")
    parser.add_argument("--destination", required=True, metavar="AET@HOST:PORT", help="where SRs are sent")
    parser.add_argument("--fhir-out", metavar="DIR", help="also write a FHIR Bundle per film here")
    parser.add_argument("--heatmaps", action="store_true", help="also send Grad-CAM Secondary Captures")
    parser.add_argument("--keep-unsent", metavar="DIR",
                        help="on stop, write results that could not be delivered here (else only logged)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="MC dropout passes (default 25)")
    parser.add_argument("--seed", type=int, help="fix the MC dropout masks (reproducible results)")
    parser.add_argument("--retry-initial", type=float, default=1.0, help="first retry delay, s (default 1)")
    parser.add_argument("--retry-max", type=float, default=60.0, help="longest retry delay, s (default 60)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it logs every PDU at INFO
    try:
        destination = Destination.parse(args.destination)
        predictor = Predictor(args.model, samples=args.samples, seed=args.seed)
        node = DicomNode(predictor, aet=args.aet, host=args.host, port=args.port, destination=destination,
                         fhir_out=args.fhir_out, heatmaps=args.heatmaps, keep_unsent=args.keep_unsent,
                         retry_initial=args.retry_initial, retry_max=args.retry_max)
        node.start()
    except (ValueError, FileNotFoundError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
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
