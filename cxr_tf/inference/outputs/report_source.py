"""What a report copies from its film's header, made safe to copy: ``report_source(ds)`` returns
the film's identity (patient, study, series, SOP) and the image descriptors the DICOM outputs use
(``dicom_sr``, ``heatmap_pm``), each value checked against its VR, and the notes saying what was
changed. A report then builds from any header the readers accept:

- a Type 2 attribute (PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate, StudyTime,
  StudyID, AccessionNumber, ReferringPhysicianName) that is absent or malformed is empty, as the
  standard allows;
- any other attribute that is malformed (a date like ``2024-13-45``, a value of an unknown VR,
  too long for its VR) is left out;
- an invalid UID (``1.2.abc``) is replaced by a UID derived from it, and an absent Series Instance
  UID by one derived from the film's SOP Instance UID; each such change is a note, which the
  SR carries (a caveat) and logs. Only an absent SOP Class, SOP Instance or Study
  Instance UID stops a report (``check_source``): nothing could place it in the film's study.

``derived_uid`` makes the UIDs of our own objects: the same film and model give the same report
UID, so a report sent again (after a crash, a retry) replaces itself instead of adding a second.
"""

from pydicom.config import RAISE
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
         "AccessionNumber", "ReferringPhysicianName")
"""Attributes a report must carry even when empty (Type 2 in the Patient and General Study modules)."""
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
OPTIONAL = ("PatientAge", "PatientSize", "PatientWeight", "StudyDescription", "SeriesInstanceUID", "Modality",
            "SeriesNumber", "BodyPartExamined", "Manufacturer", "ManufacturerModelName", "Rows", "Columns",
            "PatientOrientation", "ImagerPixelSpacing", "PixelSpacing", "ContentDate", "ContentTime",
            "FrameOfReferenceUID", "ImageLaterality", "ViewPosition", "SpecificCharacterSet")
"""The rest of what the outputs read from a film's header (identity, TID 1600 descriptors, map geometry)."""
BINARY_VRS = ("US", "SS", "UL", "SL", "FL", "FD")


def derived_uid(*parts):
    """A UID (2.25-free pydicom root) determined by ``parts`` (strings): the same parts, the same UID."""
    return generate_uid(entropy_srcs=["cxr_tf", *map(str, parts)])


def check_source(source):
    """ValueError naming what is missing when ``source`` (a pydicom Dataset) cannot anchor a report."""
    missing = [k for k in REQUIRED_UIDS if not _raw(source, k)]
    if missing:
        raise ValueError(f"the source DICOM lacks {', '.join(missing)}: cannot place the report in its study")


def report_source(ds):
    """(header, notes): a new Dataset with the attributes of ``ds`` a report copies, each valid for
    its VR (module doc), and the notes naming each change (empty for a clean header)."""
    check_source(ds)
    header, notes = Dataset(), []
    for keyword in (*REQUIRED_UIDS, *TYPE2, *OPTIONAL):
        value, problem = _checked(ds, keyword)
        if problem is None and value is not None:
            setattr(header, keyword, value)
            continue
        if problem is not None and _vr(keyword) == "UI":
            value = derived_uid("replaced", keyword, problem)
            setattr(header, keyword, value)
            notes.append(f"the film's {keyword} {problem!r} is not a valid UID; this report uses {value} instead")
        elif problem is not None:
            notes.append(f"the film's {keyword} {problem!r} is malformed; this report leaves it "
                         f"{'empty' if keyword in TYPE2 else 'out'}")
        if keyword in TYPE2:
            setattr(header, keyword, "")
    if "SeriesInstanceUID" not in header:
        header.SeriesInstanceUID = derived_uid("series of", header.SOPInstanceUID)
        notes.append(f"the film has no SeriesInstanceUID; this report names its series {header.SeriesInstanceUID}")
    return header, notes


def _vr(keyword):
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    return dictionary_VR(tag_for_keyword(keyword))


def _raw(ds, keyword):
    """The value of ``keyword`` in ``ds`` as pydicom gives it, or None when absent, empty or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert (bad VR, bad bytes) counts as absent
        return None
    return None if value in (None, "", b"") else value


def _checked(ds, keyword):
    """(value, None) when valid or absent ((None, None)); (None, the raw text) when malformed."""
    try:
        element = ds.data_element(keyword) if keyword in ds else None
        value = None if element is None else element.value
    except Exception as err:  # noqa: BLE001 - an element pydicom cannot convert at all
        return None, f"<unreadable: {type(err).__name__}>"
    if value in (None, "", b"") or (isinstance(value, (list, tuple)) and not value):
        return None, None
    vr = _vr(keyword)
    if element.VR != vr:  # e.g. a VR "ZZ" or UN: not what the standard says this attribute is
        return None, _text(value)
    try:
        for item in value if element.VM > 1 else [value]:
            validate_value(vr, item if vr in BINARY_VRS else str(item), RAISE)
            if keyword == "PatientSex" and str(item) not in ("M", "F", "O"):
                raise ValueError(item)
    except Exception:  # noqa: BLE001 - pydicom's validators raise ValueError; anything else is as bad
        return None, _text(value)
    return value, None


def _text(value):
    return str(value)[:80]
