"""Grad-CAM maps of the positive findings as DICOM Parametric Maps (highdicom ``ParametricMap``):
one single-frame map per finding, float32 Grad-CAM values (0..1) on the film's own pixel grid, in a
new series of the film's study, referencing the film (Derivation Image Sequence, spatial locations
preserved) and saying what its values are (Real World Value Mapping: identity, unit UCUM "1",
label ``GRADCAM``, the finding named in the explanation). Viewers that render AI results read
Parametric Maps; ``heatmap_sc`` (a burned-in overlay) stays for those that do not.

Geometry. The Parametric Map IOD requires a Frame of Reference and a plane in the patient
coordinate system (dciodvfy: Frame of Reference UID, Pixel Measures, Plane Position and Plane
Orientation are type 1); a projection radiograph (CR, DX) has none of them. The map therefore states
the film's pixel grid as its plane: the film's own Frame of Reference UID when it has one, else a
UID derived from the film's SOP Instance UID (every map of one film shares it); pixel spacing the
film's Pixel Spacing, else its Imager Pixel Spacing (the detector's, as the film states it), else
1 mm; orientation from the film's Patient Orientation letters (row and column directions), the
first pixel at the origin. It claims no more than the film does: the map lies on the film's pixel
grid, pixel for pixel, which the derivation reference says as well (docs/conformance.md).
"""

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_tf.inference.outputs.report_source import derived_uid, report_source
from cxr_tf.inference.outputs.structured import MANUFACTURER, device_uid, model_identity

MAP_SERIES_NUMBER = 9003
MAP_SERIES_DESCRIPTION = "cxr_tf Grad-CAM maps (decision aid)"
LUT_LABEL = "GRADCAM"
DIRECTIONS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
"""Patient Orientation letters as unit vectors of the patient coordinate system (LPS)."""


def make_maps(source, cams, probabilities, description):
    """[ParametricMap] (pydicom Datasets), one per finding of ``cams``.

    source: the film's pydicom Dataset (identity copied from it, made valid by ``report_source``;
    pixels not needed); the maps' UIDs derive from the film's SOP Instance UID, the model's Device
    UID and the finding (a resend replaces). cams:
    {finding: float (H, W) 0..1 map on the film grid} (``Predictor.cams``); probabilities:
    {finding: 0..1}; description: ``Predictor.describe()`` (the model: equipment, Device UID).
    """
    source, _ = report_source(source)  # its notes are the SR's to carry
    geometry = _geometry(source)
    identity = model_identity(description)
    device = device_uid(description)
    series_uid = derived_uid("maps", "series", source.SOPInstanceUID, device)
    maps = []
    for number, (finding, cam) in enumerate(cams.items(), start=1):
        cam = np.asarray(cam, np.float32)
        if cam.shape != (geometry.Rows, geometry.Columns):
            raise ValueError(f"the {finding} map is {cam.shape}, the film {geometry.Rows}x{geometry.Columns}")
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=LUT_LABEL, lut_explanation=f"Grad-CAM of {finding} (cxr_tf), 0..1"[:64],
            unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
        pm = hd.pm.ParametricMap(
            source_images=[geometry], pixel_array=cam, series_instance_uid=series_uid,
            series_number=MAP_SERIES_NUMBER, sop_instance_uid=derived_uid("map", finding, source.SOPInstanceUID, device),
            instance_number=number,
            manufacturer=MANUFACTURER, manufacturer_model_name=identity.name,
            software_versions=identity.software_versions(description),
            device_serial_number=device[-16:], contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label=LUT_LABEL, content_description=f"Grad-CAM {finding} p={probabilities[finding]:.2f}"[:64],
            content_qualification="RESEARCH", series_description=MAP_SERIES_DESCRIPTION)
        pm.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
        pm.DerivationDescription = f"Grad-CAM of {finding} by cxr_tf {identity.arch} run {identity.run_name}"[:1024]
        pm.DeviceUID = device
        maps.append(pm)
    return maps


def _geometry(source):
    """A copy of ``source`` (``report_source``'s) with the plane geometry the Parametric Map needs (module doc)."""
    image = Dataset()
    for element in source:
        image.add(element)
    if not image.get("FrameOfReferenceUID"):
        image.FrameOfReferenceUID = derived_uid("frame of reference", source.SOPInstanceUID)
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    image.PixelSpacing = [float(v) for v in spacing]
    image.ImageOrientationPatient = _orientation(source.get("PatientOrientation"))
    image.ImagePositionPatient = [0.0, 0.0, 0.0]
    image.SliceThickness = 1.0
    if not image.get("Rows") or not image.get("Columns"):
        raise ValueError("the source DICOM lacks Rows/Columns: cannot place a map on its grid")
    return image


def _orientation(value):
    """Image Orientation (Patient) of a film's Patient Orientation (e.g. ["L", "F"]); a value that
    names no two perpendicular directions gives the conventional frontal chest one (["L", "F"])."""
    try:
        row, col = (np.array(DIRECTIONS[str(v).strip()[:1].upper()], float) for v in value)
        if abs(float(row @ col)) < 1e-6:
            return [*map(float, row), *map(float, col)]
    except (TypeError, ValueError, KeyError):
        pass
    return [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def write(result, predictor):
    """``<stem>_<finding>.pm.dcm``: one Parametric Map per positive finding of a triaged DICOM FilmResult
    (none for a film without one; registry entry point)."""
    from cxr_tf.inference.outputs import Output

    cams = predictor.cams(result)
    maps = make_maps(result.header, cams, result.probabilities, predictor.describe()) if cams else []
    return [Output(f"_{finding}.pm.dcm", pm) for finding, pm in zip(cams, maps)]
