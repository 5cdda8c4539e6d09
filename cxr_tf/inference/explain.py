"""Grad-CAM overlays of films from a trained run, scored against the radiologists' boxes:
the library behind ``python -m cxr_tf.explain``."""

from pathlib import Path

import numpy as np

from cxr_tf.inference.gradcam import (IOU_THRESHOLD, label_index, cam_to_film, localisation_summary, localise,
                                      overlay_png, read_boxes, scale_box)

def explain_films(run_dir, films, out, findings=None, boxes_path=None, threshold=IOU_THRESHOLD):
    """Write Grad-CAM overlays of ``films`` (paths) into ``out``; return a report dict.

    findings: None = the film's positive findings (run thresholds; the most probable
    one when none is positive), ``"all"``, or a list of names. With ``boxes_path``
    (the NIH box table), films named in it also get their boxed findings explained,
    scored (pointing game, IoU) and the boxes outlined on the overlays. Report: {"films": [{"file", "overlays":
    {finding: path}, "probabilities", "localisation": [...]} | {"file", "error"}],
    "localisation": per-finding summary}.
    """
    from cxr_tf.inference.predictor import Predictor

    predictor = Predictor(run_dir, samples=1)
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
        probs = predictor.probabilities(x, meta)
        chosen = _choose_findings(findings, probs, predictor.thresholds, predictor.labels)
        chosen += [f for f in film_boxes if f not in chosen]
        maps, _ = predictor.gradcam.cams(x, chosen, meta)
        entry = {"file": str(path), "probabilities": {f: round(float(p), 4) for f, p in zip(predictor.labels, probs)},
                 "overlays": {}, "localisation": []}
        on_film = [cam_to_film(m, film.pixels.shape) for m in maps[0]]
        for finding, cam in zip(chosen, on_film):
            target = out / f"{path.stem}_{finding}.png"
            p = probs[predictor.labels.index(finding)]
            target.write_bytes(overlay_png(film.pixels, cam, text=f"{finding} p={p:.2f}",
                                           boxes=film_boxes.get(finding, ())))
            entry["overlays"][finding] = str(target)
        for row in localise([on_film], [film_boxes], chosen, threshold):
            row["film"] = str(path)
            rows.append(row)
            entry["localisation"].append(row)
        report.append(entry)
    return {"films": report, "localisation": localisation_summary(rows)}


def _choose_findings(findings, probs, thresholds, labels):
    if findings in (None, [], ()):
        positive = [f for f, p in zip(labels, probs) if p >= thresholds[f]]
        return sorted(positive, key=lambda f: -probs[labels.index(f)]) or [labels[int(np.argmax(probs))]]
    if findings == "all" or list(findings) == ["all"]:
        return list(labels)
    for f in findings:
        label_index(f, labels)
    return list(findings)
