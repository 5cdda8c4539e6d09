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
          CONTAINS NUM     Threshold Value (DCM 122411): the run's decision threshold
      CONTAINS CONTAINER (UMLS C0034375) Qualitative Evaluations
        processed:     TEXT Priority (SCT 260870009) = Urgent | Review | Routine (the triage level);
                       TEXT Recommendation (DCM 121075) = the triage action; TEXT Impression (DCM
                       121073) = the triage message; CODE <finding> = Present | Absent (SCT) per
                       finding, at the run's threshold; TEXT Comment (DCM 121106), one per caveat;
                       TEXT Statement (DCM 122152) = the decision-aid statement
        not processed: CODE Finding (DCM 121071) = Not Evaluated (SCT 373121007); TEXT Reason for
                       stopping test (SCT 246101005) = NOT_PROCESSED_<REASON>; TEXT Impression = the
                       message; TEXT Statement = the decision-aid statement

Every concept is a published one (DCM, SCT, UMLS, UCUM), so validators that know the coding schemes
(dciodvfy) have nothing to warn about. The one exception is a finding with no SNOMED CT code
(NIH's Pleural_Thickening, a label of another label set): its code is local (99CXRTF), and the
document then declares 99CXRTF in the Coding Scheme Identification Sequence. The document carries
the Contributing Equipment Sequence (purpose (DCM 109102) "Processing Equipment": manufacturer,
model name, software versions, Device UID). The Device UID (``structured.device_uid``) is derived from
the digest of the run's ``model.keras``: the same run gives the same UID on every host, a
retrained or re-imported model another; the FHIR ``Device`` carries the same UID.

``make_sr`` builds the report of a triaged film, ``make_not_processed_sr`` that of a film not
analysed; ``read_sr`` reads either back (tests, and a receiver checking it).
"""

import logging

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_tf.inference.outputs.structured import (
    DISCLAIMER,
    MANUFACTURER,
    NOT_PROCESSED,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    TRIAGE_LEVELS,
    device_uid,
    finding_rows,
    model_identity,
    not_processed_code,
)
from cxr_tf.inference.outputs.report_source import check_source, derived_uid, report_source

log = logging.getLogger(__name__)

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
# The report's own concepts, all published (module doc); FHIR keeps its urn:cxr-tf:codes (structured.py)
PRIORITY = codes.SCT.Priority  # TEXT: the triage level, as the predictor names it
IMPRESSION = codes.DCM.Impression  # TEXT: the triage message, or why the film was not analysed
CAVEAT = codes.DCM.Comment  # TEXT: one caveat
DECISION_AID = codes.DCM.Statement  # TEXT: the decision-aid statement (structured.DISCLAIMER)
THRESHOLD = codes.DCM.ThresholdValue  # NUM: the run's decision threshold of a finding
NOT_EVALUATED = (codes.DCM.Finding, codes.SCT.NotEvaluated)  # CODE: a film received, not analysed
REASON = codes.SCT.ReasonForStoppingTest  # TEXT: NOT_PROCESSED_<REASON> (structured.not_processed_code)


def finding_code(row):
    return hd.sr.CodedConcept(row.code, row.scheme, row.meaning)


def make_sr(result, source, description):
    """The TID 1500 report (a highdicom ``Comprehensive3DSR``, a pydicom Dataset) of a triaged film.

    result: one processed ``FilmResult.as_dict()``; source: the film's pydicom Dataset (patient,
    study and SOP identity are copied from it, made valid by ``report_source``; pixel data not
    needed); description: ``Predictor.describe()``. Its SOP Instance UID is derived from the film's
    and the model's Device UID: the same film and model give the same UID (a resend replaces).
    """
    source, notes = _source(source)
    rows = finding_rows(result, description["thresholds"])
    identity = model_identity(description)
    algorithm = hd.sr.AlgorithmIdentification(name=identity.name, version=identity.version,
                                              parameters=identity.parameters(result.get("gate"),
                                                                             result.get("caveats", [])))
    image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
    groups = [_finding_group(row, algorithm, image, derived_uid("tracking", source.SOPInstanceUID,
                                                                device_uid(description), row.label))
              for row in rows]
    report = hd.sr.MeasurementReport(observation_context=_observer(description), procedure_reported=PROCEDURE,
                                     imaging_measurements=groups, title=TITLE,
                                     language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE),
                                     referenced_images=[_library_image(source)])
    [root] = report
    level = result["triage"]["level"]
    evaluations = [hd.sr.TextContentItem(PRIORITY, TRIAGE_LEVELS[level][1], relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(codes.DCM.Recommendation, result["triage"]["action"],
                                         relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(IMPRESSION, result["message"], relationship_type="CONTAINS")]
    # the verdict per finding at the run's threshold (TID 1500 row 13: pixelmed's TID 1501 has no
    # row for a group's qualitative evaluations, so they sit here, named by the finding's code)
    evaluations += [hd.sr.CodeContentItem(finding_code(row), codes.SCT.Present if row.positive else codes.SCT.Absent,
                                          relationship_type="CONTAINS") for row in rows]
    # an unvalidated run says so to the reader too; so does a header the report had to mend
    evaluations += _caveats([*result.get("caveats", []), *notes])
    root.ContentSequence.append(_evaluations(evaluations))
    return _document(root, source, description, "triage",
                     local_codes=any(row.scheme == PRIVATE_SCHEME for row in rows))


def make_not_processed_sr(not_processed, source, description, gate=None):
    """The TID 1500 report of a film received and not analysed: it names the film (Image Library)
    and says why (``not_processed``: a ``results.NotProcessed``), with no measurement.

    source: the film's header (pydicom Dataset; the pixels need not be readable; made valid by
    ``report_source``); gate: the input gate's record of the film when it decided
    (``FilmResult.gate``). Its UID is derived like ``make_sr``'s (another one: a film first
    refused, then sent again and triaged, keeps both reports)."""
    source, notes = _source(source)
    root = hd.sr.ContainerContentItem(name=TITLE, template_id="1500")
    items = list(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    items += _observer(description)
    items.append(hd.sr.CodeContentItem(codes.DCM.ProcedureReported, PROCEDURE, relationship_type="HAS CONCEPT MOD"))
    items += hd.sr.ImageLibrary([_library_image(source)])
    code, _ = not_processed_code(not_processed)
    evaluations = [hd.sr.CodeContentItem(*NOT_EVALUATED, relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(REASON, code, relationship_type="CONTAINS"),
                   hd.sr.TextContentItem(IMPRESSION, _why(not_processed, gate), relationship_type="CONTAINS"),
                   *_caveats(notes)]
    items.append(_evaluations(evaluations))
    root.ContentSequence = hd.sr.ContentSequence(items)
    return _document(root, source, description, "not processed")


def _source(source):
    """``report_source`` of the film's header, each note logged with the film's UID."""
    source, notes = report_source(source)
    for note in notes:
        log.warning("SOP Instance %s: %s", source.SOPInstanceUID, note)
    return source, notes


def _caveats(texts):
    return [hd.sr.TextContentItem(CAVEAT, text, relationship_type="CONTAINS") for text in texts]


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
    items = [*items, hd.sr.TextContentItem(DECISION_AID, DISCLAIMER, relationship_type="CONTAINS")]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _finding_group(row, algorithm, image, tracking_uid):
    """TID 1501 measurement group of one finding: its probability, MC uncertainty and threshold."""
    code = finding_code(row)
    measurements = [
        hd.sr.Measurement(codes.DCM.Probability, row.probability, NO_UNITS, derivation=codes.SCT.Mean),
        # the Algorithm Parameters say how the standard deviation was drawn (MC dropout, samples)
        hd.sr.Measurement(codes.DCM.Probability, row.uncertainty, NO_UNITS, derivation=codes.SCT.StandardDeviation),
        hd.sr.Measurement(THRESHOLD, row.threshold, NO_UNITS),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=row.label),
        finding_type=code, algorithm_id=algorithm, source_images=[image], measurements=measurements)


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


def _document(root, source, description, kind, local_codes=False):
    """The Comprehensive 3D SR holding ``root``, in the film's study, new series; ``source``: what
    ``report_source`` made of the film's header; ``kind``: what the report is (its UIDs derive from
    it, the film's SOP Instance UID and the model's Device UID); ``local_codes``: a finding is coded in
    99CXRTF, which the document then declares."""
    device = device_uid(description)
    identity = model_identity(description)
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=PROCESSING_EQUIPMENT, manufacturer_model_name=identity.name,
        software_versions=identity.software_versions(description), contribution_description=(
            "machine-learning triage of the referenced film (decision aid, not a diagnosis)"))
    equipment.DeviceUID = device
    # highdicom copies and searches the whole tree it is given (most of the time of a report): it
    # gets the root with the Image Library only (the film's reference, for the evidence), and
    # the full tree is attached after
    library = [item for item in root.ContentSequence if item.ValueType == "CONTAINER"
               and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value]
    outline = hd.sr.ContainerContentItem(name=TITLE, template_id="1500")
    outline.ContentSequence = hd.sr.ContentSequence(library)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=outline, series_instance_uid=derived_uid(kind, "series", source.SOPInstanceUID, device),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid(kind, "report", source.SOPInstanceUID, device),
        instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description=SR_SERIES_DESCRIPTION,
        contributing_equipment=[equipment])
    sr.ContentSequence = root.ContentSequence
    if local_codes:
        scheme = Dataset()  # a finding with no published code (module doc)
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
    """A coded entry's value: Code Value, or Long Code Value (a value over 16 characters, as another
    writer may use)."""
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
        elif kind == "TEXT" and code == PRIORITY.value:
            out["triage_level"] = item.TextValue.lower()
        elif kind == "TEXT" and code == REASON.value:
            out["reason"] = item.TextValue[len(NOT_PROCESSED[0]) + 1:].lower()
        elif kind == "TEXT" and code == IMPRESSION.value:
            out["message" if out["status"] == "processed" else "error"] = item.TextValue
        elif kind == "TEXT" and code == codes.DCM.Recommendation.value:
            out["action"] = item.TextValue
        elif kind == "TEXT" and code == CAVEAT.value:
            out.setdefault("caveats", []).append(item.TextValue)
        elif kind == "TEXT" and code == DECISION_AID.value:
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
            if _code(item) == THRESHOLD.value:
                values["threshold"] = value
            elif codes.SCT.StandardDeviation.meaning in mods:
                values["uncertainty"] = value
            else:
                values["probability"] = value
    algorithm["Algorithm Parameters"] = params
    return label, code, values


def write(result, predictor):
    """``<stem>.sr.dcm``: the report (a new series) of a DICOM FilmResult: the triage of a processed
    film, "received, not analysed" of one that was not (registry entry point). A triaged film whose
    report cannot be built gets the "not processed" report (reason ``output_failed``) instead, never
    nothing. A film whose header cannot place a report in its study (no header, no UIDs) gets none
    (processed: ValueError naming what is missing)."""
    from cxr_tf.inference.outputs import Output
    from cxr_tf.inference.results import NotProcessed

    header, description = result.header, predictor.describe()
    if result.ok:
        check_source(header)
        try:
            return [Output(".sr.dcm", make_sr(result.as_dict(), header, description))]
        except Exception as err:  # noqa: BLE001 - any failure still owes the film an answer
            log.exception("the triage report of %s could not be built; sending its not-processed report", result.file)
            first = (str(err).strip().splitlines() or [""])[0][:200]
            not_processed = NotProcessed("output_failed", f"{result.file}: its triage report could not be built "
                                                          f"({type(err).__name__}: {first})")
            return [Output(".sr.dcm", make_not_processed_sr(not_processed, header, description, gate=result.gate))]
    try:
        check_source(header)
    except (TypeError, ValueError):  # no header (a PNG, a file unread) or no UIDs: no study to join
        return []
    return [Output(".sr.dcm", make_not_processed_sr(result.not_processed, header, description, gate=result.gate))]
