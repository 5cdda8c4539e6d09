"""The triage result of one DICOM film as a DICOM Comprehensive SR (highdicom), a new
series in the film's study that references the film.

Content tree (``docs/integration.md`` says why this design and not TID 1500 or the
Chest CAD SR)::

    CONTAINER  (LN 18748-4) Diagnostic imaging report
      HAS CONCEPT MOD  Language = English (US)
      HAS OBS CONTEXT  Observer type = Device; device UID, name, manufacturer, model
      HAS CONCEPT MOD  Procedure reported = (SCT 399208008) Plain chest X-ray
      HAS CONCEPT MOD  Algorithm name / version / parameters (TID 4019)
      CONTAINS IMAGE   Source = the film (SOP Class and Instance UID)
      CONTAINS CODE    Triage level = Urgent | Review | Routine   (99CXRTF)
      CONTAINS TEXT    Recommendation = the triage action
      CONTAINS TEXT    Triage message = e.g. "critical finding: Pneumothorax (0.91)"
      CONTAINS TEXT    Decision aid statement
      CONTAINS CONTAINER Measurement group (TID 1501), one per finding:
          tracking identifier = finding label (+ a UID), finding type = finding code,
          NUM Probability (DCM 122157), derivation Mean               [unit UCUM "1"]
          NUM Probability (DCM 122157), derivation Standard Deviation [MC dropout]
          NUM Decision threshold (99CXRTF)
          CODE <finding> = Present | Absent (SCT), at the run's threshold

``make_sr`` builds it; ``read_sr`` reads one back (tests, and a receiver checking it).
"""

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr_tf.inference.outputs.structured import (
    DECISION_AID,
    DISCLAIMER,
    MANUFACTURER,
    MC_STD,
    PRIVATE_SCHEME,
    THRESHOLD,
    TRIAGE_LEVEL,
    TRIAGE_LEVELS,
    TRIAGE_MESSAGE,
    CAVEAT,
    finding_rows,
    model_identity,
)

SR_SERIES_NUMBER = 9001
"""Series number of our SR series (high, so it sorts after the acquisition series)."""
TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
PROCEDURE = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = codes.UCUM.NoUnits
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
_PATIENT_STUDY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                  "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName")


def private(pair):
    """A 99CXRTF CodedConcept from (value, meaning)."""
    return hd.sr.CodedConcept(pair[0], PRIVATE_SCHEME, pair[1])


def finding_code(row):
    return hd.sr.CodedConcept(row.code, row.scheme, row.meaning)


def device_uid(identity):
    """A stable UID of the model (the same run gives the same UID on every host)."""
    return generate_uid(entropy_srcs=[MANUFACTURER, identity.arch, identity.run_name])


def check_source(source):
    """ValueError naming what is missing when ``source`` (a pydicom Dataset) cannot anchor an SR."""
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if not source.get(k)]
    if missing:
        raise ValueError(f"the source DICOM lacks {', '.join(missing)}: cannot place the SR in its study")


def make_sr(result, source, description, series_uid=None, instance_number=1):
    """The Comprehensive SR (a highdicom ``ComprehensiveSR``, a pydicom Dataset) of ``result``.

    result: one successful ``Predictor`` result dict; source: the film's pydicom Dataset
    (patient, study and SOP identity are copied from it; pixel data not needed);
    description: ``Predictor.describe()``. series_uid: put several SRs in one series.
    """
    check_source(source)
    rows = finding_rows(result, description["thresholds"])
    identity = model_identity(description)
    algorithm = hd.sr.AlgorithmIdentification(name=identity.name, version=identity.version,
                                              parameters=identity.parameters())
    image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
    root = hd.sr.ContainerContentItem(name=TITLE)
    items = list(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=device_uid(identity), name=identity.name,
                                                       manufacturer_name=MANUFACTURER, model_name=identity.arch)
    items += hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    items.append(hd.sr.CodeContentItem(codes.DCM.ProcedureReported, PROCEDURE, relationship_type="HAS CONCEPT MOD"))
    items += algorithm
    items.append(image)
    level = result["triage"]["level"]
    items.append(hd.sr.CodeContentItem(private(TRIAGE_LEVEL), private(TRIAGE_LEVELS[level]),
                                       relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(codes.DCM.Recommendation, result["triage"]["action"],
                                       relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(private(TRIAGE_MESSAGE), result["message"], relationship_type="CONTAINS"))
    for caveat in result.get("caveats", []):  # an unvalidated run says so in the report too
        items.append(hd.sr.TextContentItem(private(CAVEAT), caveat, relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(private(DECISION_AID), DISCLAIMER, relationship_type="CONTAINS"))
    for row in rows:
        items += _finding_group(row)
    # highdicom copies and searches the whole tree it is given (0.4 s of a 0.6 s SR on
    # 2 cores, most of the node's time per film); it needs only the root and the source
    # reference to fill the SOP-level modules and the evidence, so it gets those, and the
    # full tree, made of the same highdicom content items, is attached afterwards.
    root.ContentSequence = hd.sr.ContentSequence([image])
    sr = hd.sr.ComprehensiveSR(
        evidence=[_header(source)], content=root, series_instance_uid=series_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, series_description="cxr_tf triage (decision aid)")
    sr.ContentSequence = hd.sr.ContentSequence(items)
    # UTF-8: triage messages and caveats carry "—" and "·", which the default repertoire
    # (ISO 646) writes as "?"
    sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


def _header(source):
    """``source`` without its pixel data (a shallow copy): highdicom copies the evidence,
    and a film's pixels (MBs) have no place in the SR."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:
            header.add(element)
    return header


def _finding_group(row):
    """TID 1501 measurement group of one finding. The algorithm and the source image are
    stated once at the root (they are the same for all 14); repeating them per group
    would double the SR's size and its build time (measured: 1.2 s -> ~0.5 s per SR)."""
    code = finding_code(row)
    measurements = [
        hd.sr.Measurement(codes.DCM.Probability, row.probability, NO_UNITS, derivation=codes.SCT.Mean),
        hd.sr.Measurement(codes.DCM.Probability, row.uncertainty, NO_UNITS, derivation=codes.SCT.StandardDeviation,
                          method=private(MC_STD)),
        hd.sr.Measurement(private(THRESHOLD), row.threshold, NO_UNITS),
    ]
    verdict = codes.SCT.Present if row.positive else codes.SCT.Absent
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=row.label),
        finding_type=code, measurements=measurements, qualitative_evaluations=[hd.sr.QualitativeEvaluation(code, verdict)])


# ---------------------------------------------------------------------- reading back

def _name(item):
    return item.ConceptNameCodeSequence[0].CodeMeaning


def read_sr(ds):
    """What an SR from ``make_sr`` says: {"triage_level", "action", "message",
    "source": (SOP Class UID, SOP Instance UID),
    "algorithm": {"Algorithm Name": str, "Algorithm Version": str, "Algorithm Parameters": [str]},
    "findings": {label: {"probability", "uncertainty", "threshold", "positive"}}}."""
    out = {"findings": {}, "algorithm": {}}
    for item in ds.ContentSequence:
        name, kind = _name(item), item.ValueType
        if kind == "CODE" and name == TRIAGE_LEVEL[1]:
            out["triage_level"] = item.ConceptCodeSequence[0].CodeMeaning.lower()
        elif kind == "TEXT" and name == codes.DCM.Recommendation.meaning:
            out["action"] = item.TextValue
        elif kind == "TEXT" and name == TRIAGE_MESSAGE[1]:
            out["message"] = item.TextValue
        elif kind == "TEXT" and name == CAVEAT[1]:
            out.setdefault("caveats", []).append(item.TextValue)
        elif kind == "TEXT" and name == DECISION_AID[1]:
            out["decision_aid"] = item.TextValue
        elif kind == "TEXT" and name == "Algorithm Parameters":  # one item per parameter
            out["algorithm"].setdefault(name, []).append(item.TextValue)
        elif kind == "TEXT" and name.startswith("Algorithm"):
            out["algorithm"][name] = item.TextValue
        elif kind == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            out["source"] = (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        elif kind == "CONTAINER":
            label, values = _read_group(item)
            out["findings"][label] = values
    return out


def _read_group(group):
    label, values = None, {}
    for item in group.ContentSequence:
        name, kind = _name(item), item.ValueType
        if kind == "TEXT" and name == "Tracking Identifier":
            label = item.TextValue
        elif kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
            mods = [m.ConceptCodeSequence[0].CodeMeaning for m in item.get("ContentSequence", [])
                    if m.ValueType == "CODE"]
            if name == THRESHOLD[1]:
                values["threshold"] = value
            elif codes.SCT.StandardDeviation.meaning in mods:
                values["uncertainty"] = value
            else:
                values["probability"] = value
        elif kind == "CODE" and name != "Finding" and item.RelationshipType == "CONTAINS":
            values["positive"] = item.ConceptCodeSequence[0].CodeValue == codes.SCT.Present.value
    return label, values


def write(result, predictor):
    """``<stem>.sr.dcm``: the SR (a new series) of a triaged DICOM FilmResult (registry entry point)."""
    from cxr_tf.inference.outputs import Output

    return [Output(".sr.dcm", make_sr(result.as_dict(), result.header, predictor.describe()))]
