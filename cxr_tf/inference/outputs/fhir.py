"""The triage result of one film as a FHIR Bundle (R4 resources, validated with
``fhir.resources``' R4B models: DiagnosticReport and Observation are unchanged between
R4 and R4B).

Bundle (type "collection", entries linked by ``urn:uuid`` full URLs):

- ``Device``: the model (name "cxr_tf <arch>", version = run name, manufacturer,
  a note with the algorithm parameters and the decision-aid statement); ``identifier`` = the
  Device UID of the DICOM SR (``urn:dicom:uid``, ``urn:oid:<UID>``: derived from the run's
  model.keras digest, ``structured.device_uid``), so an SR and a Bundle of one film join on it.
- one ``Observation`` per finding: code = the finding (SNOMED CT, or our local code
  system), ``valueQuantity`` = probability (UCUM "1"), ``interpretation`` = POS/NEG
  (HL7 v3 ObservationInterpretation) at the run's threshold, components = the
  MC-dropout standard deviation and the threshold; status "preliminary" (no person
  has verified it), ``device`` = the model.
- ``DiagnosticReport``: category RAD, code LOINC 18748-4 "Diagnostic imaging study",
  status "preliminary", ``result`` = the Observations, ``conclusion`` = the triage
  action, ``conclusionCode`` = the triage level, ``imagingStudy`` = a logical reference
  to the study by its Study Instance UID (identifier system ``urn:dicom:uid``), subject
  = a logical reference to the patient by the DICOM PatientID when known.

A film received and not analysed (``results.NotProcessed``: unreadable, not a chest radiograph,
refused by the input gate) gets a Bundle of the Device and a DiagnosticReport with status
"cancelled", no results, ``conclusion`` = why, and ``conclusionCode`` = the coded reason
(``NOT_PROCESSED_<REASON>``), joined to its study and patient like any other report.

See ``docs/integration.md``. ``make_bundle`` builds it, ``bundle_json`` serialises it; ``write`` and ``answer`` are the
registry's entry points (``cxr_tf.inference.outputs``).
"""

import datetime
import json
import uuid

from cxr_tf.inference.outputs.structured import (
    DISCLAIMER,
    MANUFACTURER,
    MC_STD,
    PRIVATE_SYSTEM,
    SNOMED_SYSTEM,
    THRESHOLD,
    TRIAGE_LEVEL,
    TRIAGE_LEVELS,
    device_uid,
    finding_rows,
    model_identity,
    not_processed_code,
)

UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
DICOM_UID = "urn:dicom:uid"


def _urn():
    return f"urn:uuid:{uuid.uuid4()}"


def _quantity(value):
    return {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}


def _private(pair):
    return {"coding": [{"system": PRIVATE_SYSTEM, "code": pair[0], "display": pair[1]}], "text": pair[1]}


def _finding_code(row):
    system = SNOMED_SYSTEM if row.scheme == "SCT" else PRIVATE_SYSTEM
    return {"coding": [{"system": system, "code": row.code, "display": row.meaning}], "text": row.label}


def make_bundle(result, description, study_uid=None, patient_id=None, issued=None):
    """A validated ``fhir.resources.R4B.bundle.Bundle`` of one film's ``result``.

    result: a ``FilmResult.as_dict()`` (processed, or "not processed"); description: ``Predictor.describe()``;
    study_uid / patient_id: the DICOM StudyInstanceUID / PatientID when the film was
    DICOM (None for PNG/JPEG: then the report has no study or subject reference).
    issued: a timezone-aware datetime (default now, UTC).
    """
    issued = (issued or datetime.datetime.now(datetime.UTC)).isoformat()
    subject = ({"identifier": {"type": {"text": "DICOM PatientID"}, "value": patient_id}}
               if patient_id else None)
    device_url, device = _urn(), _device(description)
    entries = [(device_url, device)]
    if result.get("status") == "not processed":
        return _bundle(entries, _report(result, None, issued, study_uid, subject), issued)
    rows = finding_rows(result, description["thresholds"])
    observation_urls = []
    for row in rows:
        observation = {
            "resourceType": "Observation", "status": "preliminary",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": _finding_code(row), "valueQuantity": _quantity(row.probability),
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "POS" if row.positive else "NEG",
                                            "display": "Positive" if row.positive else "Negative"}]}],
            "component": [{"code": _private(MC_STD), "valueQuantity": _quantity(row.uncertainty)},
                          {"code": _private(THRESHOLD), "valueQuantity": _quantity(row.threshold)}],
            "device": {"reference": device_url}, "issued": issued}
        if subject:
            observation["subject"] = subject
        url = _urn()
        observation_urls.append(url)
        entries.append((url, observation))
    return _bundle(entries, _report(result, observation_urls, issued, study_uid, subject), issued)


def _device(description):
    identity = model_identity(description)
    gate = description.get("gate")
    notes = [{"text": "; ".join(identity.parameters())}, {"text": DISCLAIMER}]
    notes.append({"text": f"input gate {gate['version']}" if gate else "input gate off (--no-gate)"})
    return {"resourceType": "Device", "manufacturer": MANUFACTURER,
            # the DICOM SR's Device UID (observer and Contributing Equipment): SR and FHIR join on it
            "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{device_uid(description)}"}],
            "deviceName": [{"name": identity.name, "type": "model-name"}],
            "version": [{"value": identity.version}], "note": notes}


def _report(result, observation_urls, issued, study_uid, subject):
    """The DiagnosticReport: the triage of a processed film (``observation_urls`` its findings),
    or, for a film not processed (``observation_urls`` None), status "cancelled" and the reason."""
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}], "text": "Chest X-ray triage (cxr_tf)"},
        "issued": issued}
    if observation_urls is None:
        from cxr_tf.inference.results import NotProcessed

        code, meaning = not_processed_code(NotProcessed(result["reason"], result["error"]))
        report.update(status="cancelled", conclusion=f"Not analysed by the AI: {result['error']}",
                      conclusionCode=[{"coding": [{"system": PRIVATE_SYSTEM, "code": code, "display": meaning}],
                                       "text": meaning}])
    else:
        level = result["triage"]["level"]
        report.update(
            result=[{"reference": u} for u in observation_urls],
            # the run's caveats (an unvalidated model) travel with the conclusion
            conclusion=" ".join([result["triage"]["action"]] + [f"Caveat: {c}." for c in result.get("caveats", [])]),
            conclusionCode=[{"coding": [{"system": PRIVATE_SYSTEM, "code": TRIAGE_LEVELS[level][0],
                                         "display": TRIAGE_LEVELS[level][1]}],
                             "text": f"{TRIAGE_LEVEL[1]}: {level}; {result['message']}"}])
    if study_uid:
        report["imagingStudy"] = [{"identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"},
                                   "display": f"Study Instance UID {study_uid}"}]
    if subject:
        report["subject"] = subject
    return report


def _bundle(entries, report, issued):
    from fhir.resources.R4B.bundle import Bundle

    entries = [*entries, (_urn(), report)]
    return Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "timestamp": issued,
                                  "entry": [{"fullUrl": url, "resource": res} for url, res in entries]})


def bundle_json(bundle):
    """The Bundle as FHIR JSON text."""
    return bundle.model_dump_json(indent=2, exclude_none=True)


def make_result_bundle(result, predictor):
    """The Bundle of a FilmResult (processed or not): study and patient from the film's DICOM header when
    it has one (the one place the FHIR identity is read)."""
    header = result.header
    study = header.get("StudyInstanceUID") if header is not None else None
    patient = header.get("PatientID") if header is not None else None
    return make_bundle(result.as_dict(), predictor.describe(), study, patient)


def write(result, predictor):
    """``<stem>.fhir.json``: the Bundle as FHIR JSON text."""
    from cxr_tf.inference.outputs import Output

    return [Output(".fhir.json", bundle_json(make_result_bundle(result, predictor)))]


def answer(result, predictor):
    """The service's answer for one film: its Bundle (a "not processed" one included)."""
    return json.loads(make_result_bundle(result, predictor).model_dump_json(exclude_none=True))
