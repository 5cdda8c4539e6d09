"""``python -m cxr_tf.score --model RUN --input PATTERN --out DIR``: score an archive of films (PNG,
JPEG, DICOM) on Apache Beam, as ``predict`` would score each film (library:
``cxr_tf.inference.scoring.score``; ``[beam]`` extra; docs/beam.md). Writes ``predictions-*`` and
``not_processed-*`` tables (CSV or Parquet) and, with ``--fhir``, ``fhir-*.ndjson`` under --out.

    python -m cxr_tf.score --model saved_models/latest --input '/archive/**/*.dcm' --out scores
    python -m cxr_tf.score --model gs://b/run --input 'gs://b/films/**' --out gs://b/scores \\
        --runner DataflowRunner --project=p --region=europe-west4 --temp_location=gs://b/tmp

Every option this command does not know is passed to Beam as a pipeline option. Exit code 0 when
the pipeline ran (films not processed are rows of the error table, not a failure), 2 for a usage
error."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import sys

from cxr_tf import cli


def parse_args(argv=None):
    parser = cli.parser("score", "Score an archive of chest films on Apache Beam: a predictions table, an error "
                                 "table (films not processed) and optionally FHIR NDJSON.")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATTERN",
                        help="films to score: paths or glob patterns Beam's filesystems match (local, gs://, "
                             "s3://; ** crosses folders), e.g. '/archive/**/*.dcm'")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local, gs:// or s3://)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="format of the two tables")
    parser.add_argument("--fhir", action="store_true", help="also write fhir-*.ndjson: one FHIR R4 Bundle per film")
    parser.add_argument("--runner", default="beam", metavar="RUNNER",
                        help="beam: Beam's direct runner on this machine (default; --workers processes), or "
                             "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner, PrismRunner, DirectRunner")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of the direct runner (each loads the model once)")
    cli.add_predictor_options(parser)
    args, beam_options = parser.parse_known_args(argv)
    args.beam_options = beam_options
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        from cxr_tf.data import beam_build
        from cxr_tf.inference import scoring

        if args.runner not in ("beam", *beam_build.RUNNERS):
            raise ValueError(f"--runner {args.runner}: expected beam or a Beam runner ({', '.join(beam_build.RUNNERS)})")
        options = beam_build.pipeline_options(args.runner, args.workers, args.beam_options)
        scoring.score(args.model, args.input, args.out, cli.predictor_options(args), table_format=args.format, fhir=args.fhir,
                      options=options)
    except cli.USAGE_ERRORS as err:
        cli.fail(parser, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
