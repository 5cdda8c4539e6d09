"""Grad-CAM overlays of the positive findings as DICOM Secondary Capture images
(highdicom ``SCImage``): one RGB image per finding, in a new series of the film's study,
referencing the film (Source Image Sequence), so a PACS viewer shows where the model
looked next to the film. The overlay is ``cxr_tf.inference.gradcam.overlay`` on the
film's own pixel grid, captioned "<finding> p=<probability> (cxr_tf, decision aid)"
(burned in, so the image says what it is wherever it is shown).
"""

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxr_tf.inference.outputs.report_source import derived_uid, report_source
from cxr_tf.inference.outputs.structured import MANUFACTURER, device_uid

HEATMAP_SERIES_NUMBER = 9002


def make_heatmaps(source, film_pixels, cams, probabilities, description):
    """[SCImage] (pydicom Datasets), one per finding of ``cams``.

    source: the film's pydicom Dataset (identity copied from it, made valid by ``report_source``);
    film_pixels: uint8 (H, W) greyscale as read (``Film.pixels``); cams: {finding: float (H, W)
    0..1 map on the film grid} (``cam_to_film``); probabilities: {finding: 0..1}; description:
    ``Predictor.describe()``. Their UIDs derive from the film's and the model's, like the SR's
    (a resend replaces).
    """
    from cxr_tf.inference.gradcam import caption, overlay

    source, _ = report_source(source)  # its notes are the SR's to carry
    device = device_uid(description)
    series_uid = derived_uid("captures", "series", source.SOPInstanceUID, device)
    images = []
    for number, (finding, cam) in enumerate(cams.items(), start=1):
        bgr = caption(overlay(film_pixels, cam), f"{finding} p={probabilities[finding]:.2f} (cxr_tf, decision aid)")
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=HEATMAP_SERIES_NUMBER,
            sop_instance_uid=derived_uid("capture", finding, source.SOPInstanceUID, device), instance_number=number, manufacturer=MANUFACTURER,
            patient_orientation=_orientation(source), series_description="cxr_tf Grad-CAM (decision aid)")
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES"
        # the body part tells the validator (and viewers' hanging protocols) it is unpaired
        sc.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
        sc.DerivationDescription = f"Grad-CAM of {finding} (cxr_tf) blended over the source film"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        sc.SourceImageSequence = [ref]
        images.append(sc)
    return images


def _orientation(source):
    """The film's PatientOrientation (the overlay keeps its grid), or ("A", "F") when absent."""
    value = source.get("PatientOrientation")
    if value and len(value) == 2 and all(value):
        return tuple(str(v) for v in value)
    return ("A", "F")


def write(result, predictor):
    """``<stem>_<finding>.sc.dcm``: one Secondary Capture per positive finding of a triaged DICOM
    FilmResult (none for a film without one; registry entry point)."""
    from cxr_tf.inference.outputs import Output

    cams = predictor.cams(result)
    images = (make_heatmaps(result.header, result.film.pixels, cams, result.probabilities, predictor.describe())
              if cams else [])
    return [Output(f"_{finding}.sc.dcm", sc) for finding, sc in zip(cams, images)]
