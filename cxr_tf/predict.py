"""``python -m cxr_tf.predict --model RUN_DIR film.png other.dcm ...``: triage films
(library: ``cxr_tf.inference.predictor.Predictor``). ``--json`` prints one object per film,
most urgent first; the exit code is 1 when any film failed, 2 for a usage error.
``--format json|fhir|dicom-sr --out DIR`` writes one file per film
(``cxr_tf.inference.outputs``; ``docs/integration.md``). See ``docs/inference.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import argparse
import json
import sys
from pathlib import Path

from cxr_tf.inference.outputs import FORMATS, export_files
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.evidence import DEFAULT_AUC_FLOOR
from cxr_tf.inference.triage import DEFAULT_BORDERLINE_K, DEFAULT_CRITICAL, DEFAULT_UNCERTAINTY_THRESHOLD
from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES

__all__ = ["Predictor", "format_table", "main"]


def format_table(results):
    """A readable worklist table (one line per film, then the message)."""
    lines = [f"{'LEVEL':<8} {'FILE':<32} {'FINDINGS':<40} MAX STD"]
    for r in results:
        name = Path(r["file"]).name
        if "error" in r:
            lines.append(f"{'ERROR':<8} {name:<32} {r['error']}")
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
    parser = argparse.ArgumentParser(prog="python -m cxr_tf.predict",
                                     description="Triage chest films: probabilities, uncertainty, worklist.")
    parser.add_argument("files", nargs="+", help="films: PNG, JPEG or DICOM (recognised by content)")
    parser.add_argument("--model", help="run folder of cxr_tf.training.trainer (default: the one saved_models/latest names)")
    parser.add_argument("--json", action="store_true", help="print a JSON list (worklist order)")
    parser.add_argument("--format", choices=FORMATS, help="write one file per film under --out: the JSON "
                        "object, a FHIR R4 Bundle, or a DICOM SR (DICOM films only); see docs/integration.md")
    parser.add_argument("--out", metavar="DIR", help="folder for --format outputs")
    parser.add_argument("--heatmaps", action="store_true",
                        help="with --format dicom-sr: also a Grad-CAM Secondary Capture per positive finding")
    parser.add_argument("--seed", type=int, help="fix the MC dropout masks (reproducible results)")
    parser.add_argument("--gradcam", metavar="DIR", help="write Grad-CAM overlays of positive findings here")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="MC dropout passes (default 25)")
    parser.add_argument("--uncertainty-threshold", type=float, default=DEFAULT_UNCERTAINTY_THRESHOLD,
                        help=f"MC std marking a finding uncertain (default {DEFAULT_UNCERTAINTY_THRESHOLD})")
    parser.add_argument("--critical", nargs="+", default=list(DEFAULT_CRITICAL), metavar="FINDING",
                        help=f"findings that may make a film urgent (default {' '.join(DEFAULT_CRITICAL)}); "
                             "give it after the films")
    parser.add_argument("--borderline-k", type=float, default=DEFAULT_BORDERLINE_K,
                        help="a finding with |p - threshold| < k x MC std is borderline: review, never urgent "
                             f"(default {DEFAULT_BORDERLINE_K:g})")
    parser.add_argument("--auc-floor", type=float, default=DEFAULT_AUC_FLOOR,
                        help="validation AUC the run (macro) and a critical finding (its own) must reach to "
                             f"call a film urgent (default {DEFAULT_AUC_FLOOR:.2f}; docs/triage.md)")
    parser.add_argument("--backend", choices=("keras", "litert", "onnx"), default="keras",
                        help="keras (model.keras, default), litert or onnx (an export of `python -m cxr_tf.export`)")
    parser.add_argument("--export", metavar="DIR", help="export folder for --backend litert|onnx "
                        "(default RUN/export/litert-int8, else RUN/export/litert; RUN/export/onnx)")
    args = parser.parse_args(argv)
    if bool(args.format) != bool(args.out):
        parser.error("--format and --out go together")
    try:
        predictor = Predictor(args.model, samples=args.samples,
                              uncertainty_threshold=args.uncertainty_threshold, critical=args.critical,
                              seed=args.seed, borderline_k=args.borderline_k, auc_floor=args.auc_floor,
                              backend=args.backend, export=args.export)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.format:
        results = predictor.worklist(export_files(predictor, args.files, args.format, args.out, args.heatmaps))
    else:
        results = predictor.worklist(predictor.predict_files(args.files, gradcam_dir=args.gradcam))
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
        print(f"{failed} of {len(results)} film(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
