"""``python -m cxr_tf.evaluate [--model RUN] [--split test]``: the evaluation report of a run
(library: ``cxr_tf.evaluation.evaluate_run``). See ``docs/evaluation.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import sys

from cxr_tf import cli

from cxr_tf.evaluation.evaluate import evaluate_run
from cxr_tf.evaluation.thresholds import DEFAULT_THRESHOLD_METHOD, THRESHOLD_METHODS


def build_parser():
    parser = cli.parser("evaluate", "Evaluate a trained run: per-finding AUC with patient-bootstrap CI, AP, "
                                    "operating points, calibration, plots, report.md/html and published results "
                                    "side by side.")
    cli.add_run_option(parser)
    parser.add_argument("--records", default=None, help="records folder (default: the run config's)")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/eval-SPLIT)")
    parser.add_argument("--batch-size", type=int, default=32, help="films per forward pass")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (0: no CI)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default=DEFAULT_THRESHOLD_METHOD,
                        help="rule for choosing thresholds on the validation split when the run has no "
                             "thresholds.json (default: f1)")
    parser.add_argument("--rechoose-thresholds", action="store_true",
                        help="ignore RUN/thresholds.json and choose on the validation split again "
                             "(the run's file is not overwritten)")
    parser.add_argument("--bins", type=int, default=10, help="calibration bins (ECE, reliability diagram)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.model, args.records, args.split, args.out, args.batch_size, args.bootstrap,
                              args.seed, args.threshold_method, args.rechoose_thresholds, args.bins)
    except cli.USAGE_ERRORS as err:  # bad arguments, missing paths, damaged records
        cli.fail(parser, err)
    macro = result["macro"]
    ci = macro.get("auc_ci") or [None, None]
    print(f"{result['num_examples']} films, {result['num_patients']} patients, split {result['split']} "
          f"({result['split_description']})")
    if macro["auc"] is not None:
        ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None else ""
        print(f"macro ROC-AUC {macro['auc']:.3f}{ci_text}; {macro['note']}")
    for caveat in result.get("caveats") or ():
        print(f"caveat: {caveat}")
    print()
    print(result["comparison_text"])
    print(f"\nwrote {', '.join(sorted(result['outputs'].values()))} to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
