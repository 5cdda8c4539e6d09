"""Grad-CAM overlays of films from a trained run, scored against the radiologists' boxes:
the library behind ``python -m cxr_tf.explain``."""

from pathlib import Path

import numpy as np

from cxr_tf.inference.gradcam import (IOU_THRESHOLD, cam_to_film, describe_map, label_index, localisation_summary,
                                      localise, overlay_png, read_boxes, scale_box)
from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES

def explain_films(run_dir, films, out, findings=None, boxes_path=None, threshold=IOU_THRESHOLD,
                  samples=DEFAULT_SAMPLES):
    """Write Grad-CAM overlays of ``films`` (paths) into ``out``; return a report dict.

    findings: None = the film's positive findings (run thresholds; the most probable
    one when none is positive), ``"all"``, or a list of names. With ``boxes_path``
    (the NIH box table), films named in it also get their boxed findings explained,
    scored (pointing game, IoU) and the boxes outlined on the overlays. Report: {"films": [{"file", "overlays":
    {finding: path}, "maps": {finding: ``describe_map``}, "probabilities", "uncertainty", "triage", "caveats",
    "localisation": [...]} | {"file", "error"}], "localisation": per-finding summary, "maps": {status: count}}.
    An empty, flat or too coarse map is named in "maps" and on its overlay's caption. samples: MC passes, as ``predict --samples``:
    with the same number, explain reports exactly predict's probabilities.
    """
    from cxr_tf.inference.predictor import Predictor

    # the default MC sampling, seeded per film: the numbers predict and the service report
    predictor = Predictor(run_dir, samples=samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = read_boxes(boxes_path) if boxes_path else None
    report, rows = [], []
    for path in films:
        path = Path(path)
        try:
            film, x, meta = predictor.load(path)
        except ValueError as err:
            report.append({"file": str(path), "error": str(err)})
            continue
        film_boxes = {}
        if table is not None:
            for r in table[table["image_index"] == path.name].itertuples():
                film_boxes.setdefault(r.label, []).append(scale_box((r.x, r.y, r.w, r.h), film.pixels.shape))
        [result] = predictor.film_results([(str(path), film, x, meta)])
        probs = np.array([result["probabilities"][f] for f in predictor.labels])
        chosen = _choose_findings(findings, probs, predictor.thresholds, predictor.labels)
        chosen += [f for f in film_boxes if f not in chosen]
        maps, _ = predictor.gradcam.cams(x, chosen, meta)
        entry = {"file": str(path), "probabilities": result["probabilities"],
                 "uncertainty": result["uncertainty"], "triage": result["triage"], "caveats": result["caveats"],
                 "overlays": {}, "maps": {}, "localisation": []}
        on_film = [cam_to_film(m, film.pixels.shape) for m in maps[0]]
        for finding, cam in zip(chosen, on_film):
            target = out / f"{path.stem}_{finding}.png"
            p = probs[predictor.labels.index(finding)]
            described = describe_map(maps[0][chosen.index(finding)], predictor.gradcam.layer_name)
            text = f"{finding} p={p:.2f}" + (f"\n{described['note']}" if described["note"] else "")
            target.write_bytes(overlay_png(film.pixels, cam, text=text, boxes=film_boxes.get(finding, ())))
            entry["overlays"][finding] = str(target)
            entry["maps"][finding] = described
        for row in localise([on_film], [film_boxes], chosen, threshold):
            row["film"] = str(path)
            rows.append(row)
            entry["localisation"].append(row)
        report.append(entry)
    counts = {}
    for entry in report:
        for described in entry.get("maps", {}).values():
            counts[described["status"]] = counts.get(described["status"], 0) + 1
    return {"films": report, "localisation": localisation_summary(rows), "maps": counts}


def _choose_findings(findings, probs, thresholds, labels):
    if findings in (None, [], ()):
        positive = [f for f, p in zip(labels, probs) if p >= thresholds[f]]
        return sorted(positive, key=lambda f: -probs[labels.index(f)]) or [labels[int(np.argmax(probs))]]
    if findings == "all" or list(findings) == ["all"]:
        return list(labels)
    for f in findings:
        label_index(f, labels)
    return list(findings)
