"""``python -m cxr_tf.predict film.png other.dcm ... [--model RUN]``: triage films (library:
``cxr_tf.inference.predictor.Predictor``). Prints a worklist table, most urgent first, or with
``--json`` one object per film in that order (``cxr_tf.inference.results``). ``--format NAME
--out DIR`` writes each film's outputs in a format of the registry
(``cxr_tf.inference.outputs``: json, fhir, dicom-sr, heatmap-pm, heatmap-sc; ``docs/integration.md``);
``--gradcam DIR`` writes a Grad-CAM overlay PNG per positive finding. Exit code 1 when any
film failed, 2 for a usage error. See ``docs/inference.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import json
import sys
from pathlib import Path

from cxr_tf import cli
from cxr_tf.inference.outputs import FORMATS, write_files

__all__ = ["format_table", "main"]


def format_table(results):
    """A readable worklist table of result dicts (one line per film, then the message)."""
    lines = [f"{'LEVEL':<8} {'FILE':<32} {'FINDINGS':<40} MAX STD"]
    for r in results:
        name = Path(r["file"]).name
        if "error" in r:
            label = "UNREAD" if r["reason"] == "unreadable" else "REFUSED"
            lines.append(f"{label:<8} {name:<32} {r['error']}")
            continue
        findings = ", ".join([f"{f} {r['probabilities'][f]:.2f}" for f in r["findings"]]
                             + [f"{f} {r['probabilities'][f]:.2f}?" for f in r.get("borderline", [])]) or "-"
        lines.append(f"{r['triage']['level'].upper():<8} {name:<32} {findings:<40} "
                     f"{max(r['uncertainty'].values()):.3f}")
        lines.append(f"{'':<8} {r['message']}; {r['triage']['action']}")
    caveats = list(dict.fromkeys(c for r in results for c in r.get("caveats", [])))
    if caveats:  # the run's caveats are the same for every film: said once, at the top
        lines = [f"CAVEAT: {c}" for c in caveats] + lines
    return "\n".join(lines)


def main(argv=None):
    parser = cli.parser("predict", "Triage chest films: probabilities, uncertainty, worklist.")
    parser.add_argument("files", nargs="+", help="films: PNG, JPEG or DICOM (recognised by content)")
    parser.add_argument("--json", action="store_true", help="print a JSON list (worklist order)")
    parser.add_argument("--format", action="append", choices=tuple(FORMATS), metavar="FORMAT",
                        help="write each film's outputs under --out in this format (repeat for several): "
                             + "; ".join(f"{name}: {f.summary}" for name, f in FORMATS.items()))
    parser.add_argument("--out", metavar="DIR", help="folder for --format outputs")
    parser.add_argument("--heatmaps", action="store_true", help="with --format dicom-sr: also --format heatmap-pm "
                        "(Grad-CAM Parametric Maps; --format heatmap-sc for viewers without them)")
    parser.add_argument("--gradcam", metavar="DIR", help="write Grad-CAM overlay PNGs of positive findings here")
    cli.add_predictor_options(parser)
    args = parser.parse_args(argv)
    if bool(args.format) != bool(args.out):
        parser.error("--format and --out go together")
    formats = list(dict.fromkeys(args.format or []))
    if args.heatmaps and "dicom-sr" in formats and "heatmap-sc" not in formats:
        formats.append("heatmap-pm")
    try:
        for name in formats:
            FORMATS[name].check()  # a missing extra: one line now, before any film is read
    except ImportError as err:
        cli.fail(parser, err)
    predictor = cli.predictor_from_args(parser, args)
    results = predictor.predict(args.files)
    if formats:
        results = write_files(predictor, results, formats, args.out)
    if args.gradcam:
        predictor.add_overlays(results, args.gradcam)
    results = [r.as_dict() for r in predictor.worklist(results)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        for r in results:
            for target in r.get("outputs", []):
                print(f"wrote {target}")
        for result in results:
            for finding, cam in result.get("gradcam", {}).items():
                print(f"Grad-CAM {Path(result['file']).name} {finding}: {cam['path']}"
                      + (f"  WARNING: {cam['note']}" if cam["note"] else ""))
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} film(s) not processed (unreadable, or refused by the input gate: "
              "see each one's reason)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
