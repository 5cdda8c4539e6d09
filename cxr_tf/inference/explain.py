"""Grad-CAM overlays of films from a trained run, scored against the radiologists' boxes:
the library behind ``python -m cxr_tf.explain``."""

from pathlib import Path

from cxr_tf.inference.gradcam import IOU_THRESHOLD, label_index, localisation_summary, localise, read_boxes, scale_box


def explain_films(predictor, films, out, findings=None, boxes_path=None, threshold=IOU_THRESHOLD):
    """Write Grad-CAM overlays of ``films`` (paths) into ``out``; return a report dict.

    predictor: a loaded ``cxr_tf.inference.predictor.Predictor`` (its probabilities are exactly
    predict's with the same options). findings: None = the findings predict calls positive
    (when there is none, the most probable one, and the entry's ``"chosen"`` says so), ``"all"``,
    or a list of names. With ``boxes_path`` (the NIH box table), films named in it also get their
    boxed findings explained, scored (pointing game, IoU) and the boxes outlined on the overlays.
    Report: {"films": [{"file", "chosen", "overlays": {finding: path}, "maps": {finding:
    ``describe_map``}, "probabilities", "uncertainty", "triage", "caveats", "localisation": [...]}
    | {"file", "error"}], "localisation": per-finding summary, "maps": {status: count}}. An
    empty, flat or too coarse map is named in "maps" and on its overlay's caption.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = read_boxes(boxes_path) if boxes_path else None
    report, rows = [], []
    for result in predictor.predict([Path(f) for f in films]):
        if not result.ok:
            report.append({"file": result.file, "error": result.error})
            continue
        path, shape = Path(result.file), result.film.pixels.shape
        film_boxes = {}
        if table is not None:
            for r in table[table["image_index"] == path.name].itertuples():
                film_boxes.setdefault(r.label, []).append(scale_box((r.x, r.y, r.w, r.h), shape))
        chosen, why = _choose_findings(findings, result, predictor.labels)
        chosen += [f for f in film_boxes if f not in chosen]
        maps = predictor.maps(result, chosen)
        entry = {"file": result.file, "chosen": why, "probabilities": result.probabilities,
                 "uncertainty": result.verdict["uncertainty"], "triage": result.verdict["triage"],
                 "caveats": result.verdict["caveats"], "overlays": {}, "maps": {}, "localisation": []}
        for finding, (film_map, described) in maps.items():
            target = out / f"{path.stem}_{finding}.png"
            target.write_bytes(predictor.overlay(result, finding, film_map, described,
                                                 boxes=film_boxes.get(finding, ())))
            entry["overlays"][finding] = str(target)
            entry["maps"][finding] = described
        for row in localise([[maps[f][0] for f in chosen]], [film_boxes], chosen, threshold):
            row["film"] = result.file
            rows.append(row)
            entry["localisation"].append(row)
        report.append(entry)
    counts = {}
    for entry in report:
        for described in entry.get("maps", {}).values():
            counts[described["status"]] = counts.get(described["status"], 0) + 1
    return {"films": report, "localisation": localisation_summary(rows), "maps": counts}


def _choose_findings(findings, result, labels):
    """(findings to map, why): predict's positive findings by default, else the most probable."""
    if findings in (None, [], ()):
        if result.findings:
            return list(result.findings), "positive findings"
        top = max(labels, key=lambda f: result.probabilities[f])
        return [top], "no positive finding: the most probable one"
    if findings == "all" or list(findings) == ["all"]:
        return list(labels), "all findings"
    for f in findings:
        label_index(f, labels)
    return list(findings), "as asked"
