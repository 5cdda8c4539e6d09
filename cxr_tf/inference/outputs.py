"""Write triage results as files, one per film: ``predict --format json|fhir|dicom-sr --out DIR``.

============ ================================ =========================================
format       file                             content
============ ================================ =========================================
json         ``<stem>.json``                  the ``predict --json`` object of the film
fhir         ``<stem>.fhir.json``             FHIR R4 Bundle (``cxr_tf.inference.fhir``)
dicom-sr     ``<stem>.sr.dcm``                DICOM Comprehensive SR (``cxr_tf.inference.dicom_sr``)
+ heatmaps   ``<stem>_<finding>.sc.dcm``      Grad-CAM Secondary Capture per positive finding
============ ================================ =========================================

``dicom-sr`` needs a DICOM film: the SR joins the film's study and references it, and
an SR with an invented study would land in the PACS as a second, unrelated study of a
patient it cannot name. A PNG/JPEG film gets a per-file error saying so. Stems that
repeat (same name in two folders) get a "_" appended.
"""

import io
import json
from pathlib import Path

from cxr_tf.inference.readers import FilmError, Limits, sniff_format

FORMATS = ("json", "fhir", "dicom-sr")


def source_dataset(data, name):
    """The pydicom Dataset (no pixel data) of DICOM bytes; FilmError when unreadable."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise FilmError(f"{name}: corrupt DICOM header ({err})") from None


def encode(predictor, result, loaded, fmt, dataset=None, heatmaps=False, description=None):
    """[(suffix, bytes)] of one film's outputs in ``fmt`` (see the module table).

    result/loaded: one item of ``Predictor.predict_sources``; dataset: the film's
    pydicom Dataset (DICOM films; required for dicom-sr); description:
    ``predictor.describe()`` when the caller has it."""
    if fmt == "json":
        return [(".json", json.dumps(result, indent=2).encode())]
    description = description or predictor.describe()
    if fmt == "fhir":
        from cxr_tf.inference.fhir import bundle_json, make_bundle

        study = dataset.get("StudyInstanceUID") if dataset is not None else None
        patient = dataset.get("PatientID") if dataset is not None else None
        return [(".fhir.json", bundle_json(make_bundle(result, description, study, patient)).encode())]
    if fmt != "dicom-sr":
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    from cxr_tf.inference.dicom_sr import make_sr

    out = [(".sr.dcm", _part10(make_sr(result, dataset, description)))]
    if heatmaps and result["findings"]:
        from cxr_tf.inference.heatmap_sc import make_heatmaps

        film, x, meta = loaded
        cams = predictor.cams(film, x, meta, result["findings"])
        for sc, finding in zip(make_heatmaps(dataset, film.pixels, cams, result["probabilities"]), cams):
            out.append((f"_{finding}.sc.dcm", _part10(sc)))
    return out


def fhir_answer(predictor, result, data):
    """One film of the service's ``?format=fhir`` answer (a JSON-ready dict): the FHIR
    Bundle of a triaged film (study and patient from the upload's DICOM header when it
    is DICOM), or an OperationOutcome carrying the per-film error."""
    from cxr_tf.inference.fhir import make_bundle, operation_outcome

    if "error" in result:
        return json.loads(operation_outcome(result["error"]).model_dump_json(exclude_none=True))
    try:
        dataset = source_dataset(data, result["file"]) if sniff_format(data) == "dicom" else None
    except FilmError as err:
        return json.loads(operation_outcome(str(err)).model_dump_json(exclude_none=True))
    study = dataset.get("StudyInstanceUID") if dataset is not None else None
    patient = dataset.get("PatientID") if dataset is not None else None
    bundle = make_bundle(result, predictor.describe(), study, patient)
    return json.loads(bundle.model_dump_json(exclude_none=True))


def _part10(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _bytes_or_path(path, limits):
    """The file's bytes, or the path itself when it cannot or should not be read whole
    (missing, a folder, over the size limit): the reader then says what is wrong."""
    try:
        path = Path(path)
        if path.is_file() and path.stat().st_size <= limits.max_bytes:
            return path.read_bytes()
    except OSError:
        pass
    return path


def export_files(predictor, paths, fmt, out_dir, heatmaps=False, limits=None):
    """Triage ``paths`` and write each film's outputs under ``out_dir``.

    Returns one dict per path, in input order: the result plus ``"outputs": [paths]``,
    or ``{"file", "error"}`` (unreadable film, or a non-DICOM film for dicom-sr).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    limits = limits or predictor.limits or Limits()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, datasets, errors = [], {}, {}
    for i, path in enumerate(paths):
        name = str(path)
        data = _bytes_or_path(path, limits)
        try:
            if isinstance(data, bytes) and sniff_format(data) == "dicom":
                datasets[i] = source_dataset(data, name)
            elif fmt == "dicom-sr" and isinstance(data, bytes):
                raise FilmError(f"{name}: --format dicom-sr needs a DICOM film (the SR joins the film's study "
                                "and references it); use --format fhir or json for PNG/JPEG films")
        except FilmError as err:
            errors[i] = {"file": name, "error": str(err)}
            continue
        items.append((i, name, data))
    triaged = predictor.predict_sources([(name, data) for _, name, data in items])
    by_index = dict(errors)
    used = set()
    description = predictor.describe()
    for (i, name, _), (result, loaded) in zip(items, triaged):
        if loaded is None:
            by_index[i] = result
            continue
        stem = Path(name).stem
        while stem in used:
            stem += "_"
        used.add(stem)
        try:
            encoded = encode(predictor, result, loaded, fmt, datasets.get(i), heatmaps, description)
        except ValueError as err:  # e.g. a DICOM film without the UIDs an SR needs
            by_index[i] = {"file": name, "error": f"{name}: {err}"}
            continue
        written = []
        for suffix, payload in encoded:
            target = out_dir / f"{stem}{suffix}"
            target.write_bytes(payload)
            written.append(str(target))
        by_index[i] = {**result, "outputs": written}
    return [by_index[i] for i in range(len(paths))]
