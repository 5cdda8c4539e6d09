"""``python -m cxr_tf.explore --labels TABLE | --records DIR --out DIR``: label, co-occurrence,
age, sex and view distributions (library: ``cxr_tf.evaluation.explore.explore``)."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import sys

from cxr_tf import cli

from cxr_tf.evaluation.explore import explore


def main(argv=None):
    parser = cli.parser("explore", "Label, co-occurrence, age, sex and view distributions of an NIH label "
                                   "table or a records folder.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="NIH label table (Data_Entry_2017*.csv[.gz], either layout)")
    source.add_argument("--records", help="records folder written by tools/build_tfrecords.py")
    parser.add_argument("--out", required=True, help="output folder for figures, summary.json, explore.md")
    args = parser.parse_args(argv)
    try:
        summary = explore(args.out, labels=args.labels, records=args.records)
    except cli.USAGE_ERRORS as err:
        cli.fail(parser, err)
    print(f"{summary['films']:,} films, {summary['patients']:,} patients; "
          f"wrote {', '.join(summary['figures'].values())}, summary.json, explore.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
