"""What the DICOM front ends share (the DICOM node, ``cxr_tf.inference.dicom_node``, and the
DICOMweb front end, ``cxr_tf.inference.dicomweb``): which data sets are chest radiographs they
triage (``chest_problem``), whether a report can join a data set's study (``identity_problem``),
a data set's header without its pixels (``header_only``), and what happens to results an archive
has not taken yet: the retry back-off (``retry_later``) and, at stop, the copy the user asked to
keep (``keep_unsent``).
"""

import time

# Storage SOP classes of chest radiographs.
CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RADIOGRAPHS = {CR: "CR", DX_PRESENTATION: "DX for presentation", DX_PROCESSING: "DX for processing"}
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST")
CHEST_REGION_CODES = {"51185008", "43799004", "39607008", "T-D3000"}  # SCT chest, thorax, lung; SRT chest

def chest_problem(ds):
    """Why ``ds`` is not a chest radiograph we triage, or None when it is.

    CR and DX images are accepted unless BodyPartExamined (or the Anatomic Region
    Sequence) names another body part (many modalities leave them empty). Secondary
    Captures must say they are of the chest, since SC holds anything from scanned
    paper to screenshots.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    region = {str(item.get("CodeValue", "")) for item in ds.get("AnatomicRegionSequence", [])}
    # BodyPartExamined wins over the Anatomic Region Sequence; neither: unknown (None)
    chest = (part in CHEST_PARTS) if part else (bool(region & CHEST_REGION_CODES) if region else None)
    if sop_class in RADIOGRAPHS:
        if chest is False:
            return f"{RADIOGRAPHS[sop_class]} of body part {part or sorted(region)}, not the chest"
        return None
    if sop_class == SECONDARY_CAPTURE:
        if chest and str(ds.get("Modality", "")).upper() in ("CR", "DX", "OT", ""):
            return None
        return "Secondary Capture not marked as a chest radiograph (BodyPartExamined CHEST, modality CR/DX/OT)"
    name = getattr(ds.get("SOPClassUID"), "name", sop_class) or "no SOP Class UID"
    return f"{name} is not a chest radiograph (CR, DX or chest Secondary Capture)"


def identity_problem(ds):
    """Why no SR could join ``ds``'s study (missing UIDs), or None."""
    from cxr_tf.inference.outputs.dicom_sr import check_source

    try:
        check_source(ds)
    except ValueError as err:
        return str(err)
    return None


def header_only(ds):
    """``ds`` without its pixel data (a shallow copy): what a report of it needs."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(element)
    return header


def retry_later(pending, error, initial, maximum):
    """Count a failed delivery of ``pending`` (anything with ``attempts``, ``error``, ``next_try``):
    its next try after ``initial`` seconds, doubling with each attempt up to ``maximum``. Returns
    the delay."""
    pending.attempts += 1
    pending.error = error
    delay = min(maximum, initial * 2 ** (pending.attempts - 1))
    pending.next_try = time.monotonic() + delay
    return delay


def keep_unsent(pending, folder):
    """Write the objects of ``pending`` (``sop_uid``, ``objects``) that were never delivered as
    ``folder/<SOP Instance UID of the film>/<object's SOP Instance UID>.dcm``; returns that folder."""
    folder = folder / pending.sop_uid
    folder.mkdir(parents=True, exist_ok=True)
    for obj in pending.objects:
        obj.save_as(folder / f"{obj.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder
