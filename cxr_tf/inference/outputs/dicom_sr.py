"""The triage result of one DICOM film as a DICOM TID 1500 Measurement Report in a Comprehensive
3D SR (highdicom ``MeasurementReport`` in ``Comprehensive3DSR``), a new series in the film's study
that references the film; and, for a film received and not analysed (``results.NotProcessed``),
a report of the same template saying so and why.

Content tree (``docs/conformance.md`` has it with every code and the validators' results)::

    CONTAINER (DCM 126000) Imaging Measurement Report            [TID 1500, ContentTemplateSequence]
      HAS CONCEPT MOD  Language of Content Item = English (US)  [TID 1204]
      HAS OBS CONTEXT  Observer Type = Device; Device Observer UID = the model's Device UID,
                       name, manufacturer, model name           [TID 1001/1004]
      HAS CONCEPT MOD  Procedure reported = (SCT 363679005) Imaging procedure
      CONTAINS CONTAINER Image Library (TID 1600): the film (SOP Class / Instance UID + descriptors)
      CONTAINS CONTAINER (DCM 126010) Imaging Measurements          (processed films)
        CONTAINS CONTAINER Measurement Group (TID 1501), one per finding:
          HAS OBS CONTEXT  Tracking Identifier = finding label; Tracking Unique Identifier
          HAS CONCEPT MOD  Finding = the finding's code (SNOMED CT, else 99CXRTF)
          HAS CONCEPT MOD  Algorithm Name / Version / Parameters  [TID 4019]: architecture, run, cxr_tf
                           version, model digest, evidence status and caveats, input gate version and score
          CONTAINS IMAGE   Source = the film
          CONTAINS NUM     Probability (DCM 122157), derivation Mean                    [UCUM "1"]
          CONTAINS NUM     Probability (DCM 122157), derivation Standard Deviation, method MC dropout
          CONTAINS NUM     Decision threshold (99CXRTF)
      CONTAINS CONTAINER (UMLS C0034375) Qualitative Evaluations
        processed:     CODE Triage level = Urgent | Review | Routine (99CXRTF); TEXT Recommendation (DCM
                       121075) = the triage action; TEXT Triage message; CODE <finding> = Present |
                       Absent (SCT) per finding, at the run's threshold; TEXT Caveat (one each); TEXT
                       Decision aid statement
        not processed: CODE Received, not analysed = NOT_PROCESSED_<REASON> (99CXRTF); TEXT Reason =
                       the message; TEXT Decision aid statement

The document carries the Contributing Equipment Sequence (purpose (DCM 109102) "Processing
Equipment": manufacturer, model name, software versions, Device UID) and declares 99CXRTF in the
Coding Scheme Identification Sequence. The Device UID (``structured.device_uid``) is derived from
the digest of the run's ``model.keras``: the same run gives the same UID on every host, a
retrained or re-imported model another; the FHIR ``Device`` carries the same UID.

``make_sr`` builds the report of a triaged film, ``make_not_processed_sr`` that of a film not
analysed; ``read_sr`` reads either back (tests, and a receiver checking it).
"""

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr_tf.inference.outputs.structured import (
    CAVEAT,
    DECISION_AID,
    DISCLAIMER,
    MANUFACTURER,
    MC_STD,
    NOT_PROCESSED,
    NOT_PROCESSED_REASON,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    THRESHOLD,
    TRIAGE_LEVEL,
    TRIAGE_LEVELS,
    TRIAGE_MESSAGE,
    device_uid,
    finding_rows,
    model_identity,
    not_processed_code,
)

SR_SERIES_NUMBER = 9001
"""Series number of our SR series (high, so it sorts after the acquisition series)."""
SR_SERIES_DESCRIPTION = "cxr_tf triage (decision aid)"
TITLE = codes.DCM.ImagingMeasurementReport
PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
"""Procedure reported: the member of CID 100 that fits a plain film (pixelmed checks the code against
CID 100, which names no chest radiography; the film's own header says what it is)."""
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # CID 7005
NO_UNITS = codes.UCUM.NoUnits
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")


def private(pair):
    """A 99CXRTF CodedConcept from (value, meaning)."""
    return hd.sr.CodedConcept(pair[0], PRIVATE_SCHEME, pair[1])


def finding_code(row):
    return hd.sr.CodedConcept(row.code, row.scheme, row.meaning)


def check_source(source):
    """ValueError naming what is missing when ``source`` (a pydicom Dataset) cannot anchor an SR."""
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if not source.get(k)]
    if missing:
        raise ValueError(f"the source DICOM lacks {', '.join(missing)}: cannot place the SR in its study")


def make_sr(result, source, description, series_uid=None, instance_number=1):
    """The TID 1500 report (a highdicom ``Comprehensive3DSR``, a pydicom Dataset) of a triaged film.

    result: one processed ``FilmResult.as_dict()``; source: the film's pydicom Dataset (patient,
    study and SOP identity are copied from it; pixel data not needed); description:
    ``Predictor.describe()``. series_uid: put several SRs in one series.
    """
    check_source(source)
    rows = finding_rows(result, description["thresholds"])
    identity = model_identity(description)
    algorithm = hd.sr.AlgorithmIdentification(name=identity.name, version=identity.version,
                                              parameters=identity.parameters(result.get("gate"),
                                                                             result.get("caveats", [])))
    image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
    groups = [_finding_group(row, algorithm, image) for row in rows]
    report = hd.sr.MeasurementReport(observation_context=_observer(description), procedure_reported=PROCEDURE,
                                     imaging_measurements=groups, title=TITLE,
                                     language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE),
                                     referenced_images=[_library_image(source)])
    [root] = report
    level = result["triage"]["level"]
    evaluations = [hd.sr.CodeContentItem(private(TRIAGE_LEVEL), private(TRIAGE_LEVELS[level]),
                                         relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(codes.DCM.Recommendation, result["triage"]["action"],
                                         relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(private(TRIAGE_MESSAGE), result["message"], relationship_type="CONTAINS")]
    # the verdict per finding at the run's threshold (TID 1500 row 13: pixelmed's TID 1501 has no
    # row for a group's qualitative evaluations, so they sit here, named by the finding's code)
    evaluations += [hd.sr.CodeContentItem(finding_code(row), codes.SCT.Present if row.positive else codes.SCT.Absent,
                                          relationship_type="CONTAINS") for row in rows]
    for caveat in result.get("caveats", []):  # an unvalidated run says so to the reader too
        evaluations.append(hd.sr.TextContentItem(private(CAVEAT), caveat, relationship_type="CONTAINS"))
    root.ContentSequence.append(_evaluations(evaluations))
    return _document(root, source, description, series_uid, instance_number)


def make_not_processed_sr(not_processed, source, description, gate=None, series_uid=None, instance_number=1):
    """The TID 1500 report of a film received and not analysed: it names the film (Image Library)
    and says why (``not_processed``: a ``results.NotProcessed``), with no measurement.

    source: the film's header (pydicom Dataset; the pixels need not be readable); gate: the
    input gate's record of the film when it decided (``FilmResult.gate``)."""
    check_source(source)
    root = hd.sr.ContainerContentItem(name=TITLE, template_id="1500")
    items = list(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    items += _observer(description)
    items.append(hd.sr.CodeContentItem(codes.DCM.ProcedureReported, PROCEDURE, relationship_type="HAS CONCEPT MOD"))
    items += hd.sr.ImageLibrary([_library_image(source)])
    code = not_processed_code(not_processed)
    evaluations = [hd.sr.CodeContentItem(private(NOT_PROCESSED), private(code), relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(private(NOT_PROCESSED_REASON), _why(not_processed, gate),
                                         relationship_type="CONTAINS")]
    items.append(_evaluations(evaluations))
    root.ContentSequence = hd.sr.ContentSequence(items)
    return _document(root, source, description, series_uid, instance_number)


def _why(not_processed, gate):
    text = not_processed.message
    if gate and "score" in gate:
        text += f" (input gate {gate['version']}, frontal score {gate['score']:.3f})"
    return text


def _observer(description):
    """TID 1001 observation context: the device observer, the model (its Device UID)."""
    identity = model_identity(description)
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=device_uid(description), name=identity.name,
                                                       manufacturer_name=MANUFACTURER, model_name=identity.arch)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def _evaluations(items):
    """TID 1500's Qualitative Evaluations container, ``items`` and the decision-aid statement in it."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items = [*items, hd.sr.TextContentItem(private(DECISION_AID), DISCLAIMER, relationship_type="CONTAINS")]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _finding_group(row, algorithm, image):
    """TID 1501 measurement group of one finding: its probability, MC uncertainty and threshold."""
    code = finding_code(row)
    measurements = [
        hd.sr.Measurement(codes.DCM.Probability, row.probability, NO_UNITS, derivation=codes.SCT.Mean),
        hd.sr.Measurement(codes.DCM.Probability, row.uncertainty, NO_UNITS, derivation=codes.SCT.StandardDeviation,
                          method=private(MC_STD)),
        hd.sr.Measurement(private(THRESHOLD), row.threshold, NO_UNITS),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=row.label),
        finding_type=code, algorithm_id=algorithm, source_images=[image], measurements=measurements)


def _header(source):
    """``source`` without its pixel data (a shallow copy): highdicom copies the evidence,
    and a film's pixels (MBs) have no place in the SR."""
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:
            header.add(element)
    return header


_LIBRARY_KEYS = ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "PatientOrientation",
                 "ImagerPixelSpacing", "PixelSpacing", "StudyDate", "ContentDate", "ContentTime",
                 "FrameOfReferenceUID", "ImageLaterality", "ViewPosition")


def _library_image(source):
    """What TID 1600's entry of the film needs from its header (highdicom reads the descriptors
    it knows: modality, size, orientation, spacing, date)."""
    image = Dataset()
    for key in _LIBRARY_KEYS:
        value = source.get(key)
        if value not in (None, ""):
            setattr(image, key, value)
    image.Modality = str(source.get("Modality") or "OT")
    if "Rows" not in image or "Columns" not in image:  # a film whose pixels could not be read
        image.Rows = image.Columns = 0
    return image


def _document(root, source, description, series_uid, instance_number):
    """The Comprehensive 3D SR holding ``root``, in the film's study, new series."""
    identity = model_identity(description)
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=PROCESSING_EQUIPMENT, manufacturer_model_name=identity.name,
        software_versions=identity.software_versions(description), contribution_description=(
            "machine-learning triage of the referenced film (decision aid, not a diagnosis)"))
    equipment.DeviceUID = device_uid(description)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_header(source)], content=root, series_instance_uid=series_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, series_description=SR_SERIES_DESCRIPTION,
        contributing_equipment=[equipment])
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = PRIVATE_SCHEME, PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    # UTF-8: triage messages and caveats carry "—" and "·", which the default repertoire
    # (ISO 646) writes as "?"
    sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


# ---------------------------------------------------------------------- reading back

def _name(item):
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _value(code):
    """A coded entry's value: Code Value, or Long Code Value (a value over 16 characters, such as
    NOT_PROCESSED_LUNGS_NOT_IN_VIEW)."""
    return code.get("CodeValue") or code.get("LongCodeValue")


def _code(item):
    return _value(item.ConceptNameCodeSequence[0])


def read_sr(ds):
    """What an SR from ``make_sr`` or ``make_not_processed_sr`` says::

        {"status": "processed" | "not processed", "template": "1500", "device_uid",
         "source": (SOP Class UID, SOP Instance UID),
         processed: "triage_level", "action", "message", "caveats" (when any), "decision_aid",
             "algorithm": {"Algorithm Name": str, "Algorithm Version": str, "Algorithm Parameters": [str]},
             "findings": {label: {"probability", "uncertainty", "threshold", "positive"}}
         not processed: "reason" (a results.REASONS key), "error" (why), "decision_aid"}
    """
    out = {"findings": {}, "algorithm": {}, "status": "not processed"}
    labels = {}  # finding code -> label
    root = ds.ContentTemplateSequence[0] if "ContentTemplateSequence" in ds else None
    out["template"] = None if root is None else str(root.TemplateIdentifier)
    for item in ds.ContentSequence:
        kind = item.ValueType
        if kind == "UIDREF" and _code(item) == codes.DCM.DeviceObserverUID.value:
            out["device_uid"] = str(item.UID)
        elif kind == "CONTAINER" and _code(item) == codes.DCM.ImageLibrary.value:
            ref = item.ContentSequence[0].ContentSequence[0].ReferencedSOPSequence[0]
            out["source"] = (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        elif kind == "CONTAINER" and _code(item) == codes.DCM.ImagingMeasurements.value:
            out["status"] = "processed"
            for group in item.ContentSequence:
                label, code, values = _read_group(group, out["algorithm"])
                out["findings"][label] = values
                labels[code] = label
        elif kind == "CONTAINER" and _code(item) == QUALITATIVE_EVALUATIONS.value:
            _read_evaluations(item, out, labels)
    if out["status"] == "not processed":
        del out["findings"], out["algorithm"]
    return out


def _read_evaluations(container, out, labels):
    for item in container.ContentSequence:
        code, kind = _code(item), item.ValueType
        if kind == "CODE" and code in labels:
            out["findings"][labels[code]]["positive"] = item.ConceptCodeSequence[0].CodeValue == codes.SCT.Present.value
        elif kind == "CODE" and code == TRIAGE_LEVEL[0]:
            out["triage_level"] = item.ConceptCodeSequence[0].CodeMeaning.lower()
        elif kind == "CODE" and code == NOT_PROCESSED[0]:
            out["reason"] = _value(item.ConceptCodeSequence[0])[len(NOT_PROCESSED[0]) + 1:].lower()
        elif kind == "TEXT" and code == NOT_PROCESSED_REASON[0]:
            out["error"] = item.TextValue
        elif kind == "TEXT" and code == codes.DCM.Recommendation.value:
            out["action"] = item.TextValue
        elif kind == "TEXT" and code == TRIAGE_MESSAGE[0]:
            out["message"] = item.TextValue
        elif kind == "TEXT" and code == CAVEAT[0]:
            out.setdefault("caveats", []).append(item.TextValue)
        elif kind == "TEXT" and code == DECISION_AID[0]:
            out["decision_aid"] = item.TextValue


def _read_group(group, algorithm):
    label, code, values, params = None, None, {}, []
    for item in group.ContentSequence:
        name, kind = _name(item), item.ValueType
        if kind == "TEXT" and name == "Tracking Identifier":
            label = item.TextValue
        elif kind == "CODE" and name == "Finding":
            code = item.ConceptCodeSequence[0].CodeValue
        elif kind == "TEXT" and name == "Algorithm Parameters":
            params.append(item.TextValue)
        elif kind == "TEXT" and name.startswith("Algorithm"):
            algorithm[name] = item.TextValue
        elif kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
            mods = [m.ConceptCodeSequence[0].CodeMeaning for m in item.get("ContentSequence", [])
                    if m.ValueType == "CODE"]
            if _code(item) == THRESHOLD[0]:
                values["threshold"] = value
            elif codes.SCT.StandardDeviation.meaning in mods:
                values["uncertainty"] = value
            else:
                values["probability"] = value
    algorithm["Algorithm Parameters"] = params
    return label, code, values


def write(result, predictor):
    """``<stem>.sr.dcm``: the report (a new series) of a DICOM FilmResult: the triage of a processed
    film, "received, not analysed" of one that was not (registry entry point). A film not processed
    whose header cannot place a report in its study (no header, no UIDs) gets none."""
    from cxr_tf.inference.outputs import Output

    if not result.ok:
        header = result.header
        if header is None or any(not header.get(k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")):
            return []
        return [Output(".sr.dcm", make_not_processed_sr(result.not_processed, header, predictor.describe(),
                                                        gate=result.gate))]
    return [Output(".sr.dcm", make_sr(result.as_dict(), result.header, predictor.describe()))]
