"""``python -m cxr_tf.explain film.png ... --out DIR [--model RUN]``: Grad-CAM overlays per
finding, scored against NIH boxes (library: ``cxr_tf.inference.explain.explain_films``)."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import json
import sys
from pathlib import Path

from cxr_tf import cli
from cxr_tf.inference.explain import explain_films
from cxr_tf.inference.gradcam import IOU_THRESHOLD


def main(argv=None):
    parser = cli.parser("explain", "Grad-CAM overlays per finding, scored against NIH boxes.")
    parser.add_argument("films", nargs="+", help="PNG, JPEG or DICOM films")
    parser.add_argument("--out", required=True, help="folder for the overlay PNGs and explain.json")
    parser.add_argument("--findings", nargs="+", help="findings to map, or 'all' (default: the ones predict calls "
                        "positive; the most probable one when there is none); give it after the films")
    parser.add_argument("--boxes", help="NIH BBox_List_2017.csv(.gz): score maps of boxed films")
    parser.add_argument("--iou-threshold", type=float, default=IOU_THRESHOLD,
                        help="IoU at which a map's box counts as a hit")
    cli.add_predictor_options(parser)
    args = parser.parse_args(argv)
    predictor = cli.predictor_from_args(parser, args)
    try:
        result = explain_films(predictor, args.films, args.out, args.findings, args.boxes, args.iou_threshold)
    except cli.USAGE_ERRORS as err:
        cli.fail(parser, err)
    (Path(args.out) / "explain.json").write_text(json.dumps(result, indent=2))
    for entry in result["films"]:
        if "error" in entry:
            print(f"{entry['file']}: ERROR {entry['error']}")
            continue
        for finding, target in entry["overlays"].items():
            note = entry["maps"][finding]["note"]
            print(f"{entry['file']}: {finding} p={entry['probabilities'][finding]:.2f} -> {target}"
                  + (f"  WARNING: {note}" if note else "") + f"  ({entry['chosen']})")
    unusable = {k: v for k, v in result["maps"].items() if k != "ok"}
    if unusable:
        total = sum(result["maps"].values())
        print(f"WARNING: {sum(unusable.values())} of {total} Grad-CAM maps show no evidence ("
              + ", ".join(f"{v} {k}" for k, v in sorted(unusable.items())) + "); see explain.json 'maps'",
              file=sys.stderr)
    for name, s in result["localisation"].items():
        print(f"localisation {name}: n={s['n']} hit_rate={s['hit_rate']:.2f} mean_iou={s['mean_iou']:.2f}")
    return 1 if any("error" in e for e in result["films"]) else 0


if __name__ == "__main__":
    sys.exit(main())
