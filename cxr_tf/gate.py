"""The input gate on its own: ``python -m cxr_tf.gate FILE...`` screens films (is each a frontal
chest film?), and ``python -m cxr_tf.gate --report`` measures the gate on material it never saw
(docs/gate.md): the acceptance of held-out frontal films (and of each ``--records`` folder's test
split), the refusal of each negative kind, and its cost per film next to one predict of a run.
"""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import json
import sys

from cxr_tf import cli

TARGETS = {"accept": 0.99, "refuse": 0.95}
"""Share of held-out pictures the gate must accept (frontal films) or refuse (everything else)."""
UNTARGETED = ("blurred", "frontal, varied", "mirrored, varied")
"""Kinds measured without a target: blurred films (none was set), and frontal films varied the way
the gate is trained (crops to 60 % of the area, a canvas, gamma 0.5-2, markers: harsher than
films as they are stored, a robustness figure). Reported, never failed."""
COST_TARGET = 0.10
"""The gate may cost at most this share of one predict."""


def _screen(parser, args, gate):
    from cxr_tf.inference.readers import FilmError, read_film

    rows = []
    for path in args.films:
        try:
            film = read_film(path)
        except FilmError as err:
            rows.append({"file": path, "error": str(err)})
            continue
        rows.append({"file": path, **gate.screen([film.pixels])[0].as_dict()})
    for row in rows:
        if "error" in row:
            print(f"{row['file']}: not read: {row['error']}")
        else:
            verdict = "passes" if row["passed"] else f"refused: {row['reason']}"
            print(f"{row['file']}: {verdict} (frontal score {row['score']:.3f})")
    return rows


def _report(parser, args, gate):
    from cxr_tf.inference.gate import measure

    predictor = None
    if args.model is not None or _latest_exists():
        from cxr_tf.inference.predictor import Predictor

        try:
            predictor = Predictor(args.model, samples=args.samples, gate=False)
        except (ValueError, OSError) as err:
            cli.fail(parser, err)
    rows, timing = measure(gate, variants=args.variants, seed=args.seed, records=args.records, predictor=predictor)
    failed = []
    print(f"input gate {gate.version} (threshold {gate.threshold}) on material it was not trained on\n")
    print(f"{'set':<44} {'kind':<24} {'n':>5} {'wants':>7} {'rate':>7}  target")
    for row in rows:
        target = None if row["kind"] in UNTARGETED else TARGETS[row["expect"]]
        met = target is None or row["rate"] >= target
        if not met:
            failed.append(row)
        kind = row["kind"].split(" (")[0]
        print(f"{row['set'][:44]:<44} {kind:<24} {row['n']:>5} {row['expect']:>7} {row['rate']:7.1%}  "
              f"{'-' if target is None else f'{target:.0%}'}{'' if met else '  MISSED'}")
    if timing is None:
        print("\ncost: no run to compare with (give --model RUN)")
    else:
        ok = timing["ratio"] <= COST_TARGET
        print(f"\ncost per film: gate {timing['gate_ms']:.2f} ms, predict {timing['predict_ms']:.1f} ms "
              f"({predictor.arch}, {predictor.image_size} px, {predictor.samples} MC samples, gate off): "
              f"{timing['ratio']:.1%} of a predict (target {COST_TARGET:.0%}){'' if ok else '  MISSED'}")
        if not ok:
            failed.append(timing)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"version": gate.version, "rows": rows, "cost": timing}, out, indent=2)
    return failed


def _latest_exists():
    from cxr_tf import runs

    try:
        runs.resolve_run_dir(None)
    except (ValueError, OSError):
        return False
    return True


def main(argv=None):
    parser = cli.parser("gate", __doc__)
    parser.add_argument("films", nargs="*", metavar="FILE", help="films to screen (PNG, JPEG or DICOM)")
    parser.add_argument("--report", action="store_true", help="measure the gate on held-out material")
    parser.add_argument("--records", nargs="+", default=[], metavar="DIR",
                        help="with --report: also measure acceptance on the frontal films of each records "
                             "folder's test split")
    cli.add_run_option(parser)
    parser.add_argument("--samples", type=int, default=10, help="with --report: MC samples of the predict "
                                                               "the gate's cost is compared with")
    parser.add_argument("--variants", type=int, default=4, help="with --report: pictures per held-out film "
                                                               "and negative kind")
    parser.add_argument("--seed", type=int, default=0, help="with --report: seed of the generated negatives")
    parser.add_argument("--json", metavar="FILE", help="with --report: also write the figures as JSON")
    args = parser.parse_args(argv)
    if not args.report and not args.films:
        parser.error("give films to screen, or --report")
    from cxr_tf.inference.gate import shipped

    gate = shipped()
    if args.films:
        rows = _screen(parser, args, gate)
        if not args.report:
            return 0 if all(r.get("passed") for r in rows) else 1
    failed = _report(parser, args, gate)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
