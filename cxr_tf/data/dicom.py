"""Decoding DICOM films into uint8 greyscale (pydicom), for the TFRecord builder's worker
processes and for inference (``cxr_tf.inference.readers``): one reader, so a film is
decoded the same way when building records and when predicting. No TensorFlow; pydicom is
imported only by this module, which ``cxr_tf.data.images`` imports the first time it meets
a file with the DICOM preamble (``DICM`` at byte 128), so workers that never see DICOM never
import it.

The pipeline, in the order the standard applies it: modality LUT or rescale
slope/intercept -> VOI LUT or window centre/width (the first one in the file) -> linear
scaling of the VOI output range to 0..255 -> inversion for ``MONOCHROME1`` (where 0 is
white). Without a VOI LUT or window the film's own min..max is stretched to 0..255, so 12-
and 16-bit data end up 8-bit like the training PNGs. Multi-frame files use frame 0.

Rows/Columns/BitsStored, and for a compressed film frame 0's own codestream header
(``cxr_tf.data.codestream``: JPEG, JPEG-LS, JPEG 2000), are checked against the limits
(``cxr_tf.data.images.FilmLimits``: plausibility and the decoding budget) before any pixel
is decoded, so a small file claiming 60,000 x 60,000 pixels, or a 256 x 256 header over a
46,000 x 46,000 codestream, is refused cheaply; a deflated file is inflated once, counted
and not kept, to refuse one that inflates past the decoded-bytes limit. Window and rescale elements stored as text
(VR LO/SH/UN) are read when the text is a number and refused naming the element when not.

Compressed transfer syntaxes decode with the pixel-data plugins installed beside pydicom:
with Pillow (a dependency) JPEG Baseline, JPEG Extended and JPEG 2000 (lossless and lossy);
RLE Lossless with pydicom itself; JPEG-LS where pyjpegls is installed. JPEG Lossless
(process 14, ``1.2.840.10008.1.2.4.57`` / ``.70``) needs pylibjpeg-libjpeg or GDCM: without
them such a film is refused with its transfer syntax named (the builder skips and lists it).

Every failure is a ``DicomError`` naming the file and the reason. Of the package this
module imports only ``cxr_tf.data.codestream`` (``cxr_tf.data.images`` imports it): the
caller passes its limits as ``check``.
"""

import io
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from cxr_tf.data import codestream

NUMERIC_ELEMENTS = ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")


class DicomError(ValueError):
    """A DICOM file that cannot be decoded; ``.file`` and ``.reason`` as in ``ImageError``."""

    def __init__(self, file, reason):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = str(file), reason


def decode_dicom(data, name, check, max_inflated):
    """(uint8 (H, W) greyscale pixels, (age, sex, view), header) of the DICOM Part 10 bytes
    ``data``; age/sex/view as ``dicom_meta`` gives them; header: the parsed pydicom Dataset
    without its pixel data (reports copy identity from it, so no caller parses it again).
    ``check(stream)``: raises for an implausible or over-budget ``codestream.Codestream``;
    called before any pixel is decoded, on what Rows/Columns/BitsStored say and, for a
    compressed film, on what frame 0's codestream says (which must agree). A deflated file
    is refused when it inflates past ``max_inflated`` bytes (counted, not kept, before
    pydicom inflates it). DicomError naming ``name`` for a corrupt file, no pixel data, a
    bad window or rescale, or pixel data that cannot be decoded (its transfer syntax named)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        _check_deflated(data, name, max_inflated)
        ds = pydicom.dcmread(io.BytesIO(data))
    except DicomError:
        raise
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, struct.error, unknown VRs, ...
        raise DicomError(name, f"corrupt DICOM ({type(err).__name__}: {short_error(err)})") from None
    if "PixelData" not in ds:
        raise DicomError(name, "DICOM file has no pixel data (a report or structured document?)")
    width = dicom_int(ds, "Columns", name)
    height = dicom_int(ds, "Rows", name)
    bits = dicom_int(ds, "BitsStored", name, default=None) or dicom_int(ds, "BitsAllocated", name, default=8)
    frames = dicom_int(ds, "NumberOfFrames", name, default=1) or 1
    check(codestream.Codestream("dicom", width, height, dicom_int(ds, "SamplesPerPixel", name, default=1), bits))
    _check_frame(ds, name, (width, height), frames, check)
    coerce_numeric(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        # Frame 0 only: a multi-frame file is never decoded whole (its frame count is not trusted).
        arr = ds.pixel_array if frames == 1 else pydicom.pixels.pixel_array(ds, index=0)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad/compressed pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = getattr(syntax, "name", syntax)
        raise DicomError(name, f"cannot decode DICOM pixel data (transfer syntax {syntax}): {short_error(err)}") from None
    if arr.ndim == 3 and frames > 1 and arr.shape[-1] != 3:
        arr = arr[0]
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = cv2.cvtColor(np.asarray(arr, dtype=np.float32), cv2.COLOR_RGB2GRAY)
            return stretch(arr, None), dicom_meta(ds), _header(ds)
        raise DicomError(name, f"unsupported DICOM photometric interpretation {photometric}")
    if arr.ndim != 2:
        raise DicomError(name, f"unexpected DICOM pixel array shape {arr.shape}")
    try:
        arr = apply_modality_lut(arr, ds)
        value_range = voi_output_range(ds)
        arr = apply_voi_lut(arr, ds)
    except Exception as err:  # noqa: BLE001 - damaged LUT descriptors raise many types
        raise DicomError(name, f"bad DICOM LUT or window ({type(err).__name__}: {short_error(err)})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all() or (value_range is not None and not np.isfinite(value_range).all()):
        raise DicomError(name, "DICOM rescale or window gives non-finite pixel values")
    pixels = stretch(arr, value_range)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels, dicom_meta(ds), _header(ds)


def _check_deflated(data, name, limit, step=16 * 2**20):
    """Refuse a deflated-syntax file whose data set inflates past ``limit`` bytes (pydicom
    inflates it whole, in memory: 2 MB of deflate can hold 2 GB)."""
    import pydicom
    from pydicom.filereader import read_dataset, read_preamble

    file = io.BytesIO(data)
    read_preamble(file, False)
    meta = read_dataset(file, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    inflater, rest, total = zlib.decompressobj(-zlib.MAX_WBITS), memoryview(data)[file.tell():], 0
    while not inflater.eof:
        chunk = inflater.decompress(rest, step)
        total += len(chunk)
        if total > limit:
            raise DicomError(name, f"deflated DICOM inflates to more than {limit:,} bytes, over the "
                                   "decoded-bytes limit")
        rest = inflater.unconsumed_tail
        if not chunk and not rest:
            return  # a truncated stream: pydicom says what is wrong


def _check_frame(ds, name, size, frames, check):
    """``check`` frame 0's codestream (JPEG, JPEG-LS, JPEG 2000) of a compressed film, and
    refuse it when its size differs from Rows/Columns: decoders trust the codestream."""
    import pydicom

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed or syntax == pydicom.uid.RLELossless:
        return
    try:
        if not pydicom.pixels.get_decoder(syntax).is_available:
            return  # nothing will decode it: the decoder's refusal names the transfer syntax
    except NotImplementedError:
        return
    try:
        frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=frames)
        stream = codestream.read(frame)
    except (codestream.CodestreamError, ValueError, TypeError, KeyError, IndexError) as err:
        raise DicomError(name, f"damaged compressed pixel data ({short_error(err)})") from None
    if stream is None:
        return  # no codestream header we know: the decoder refuses it, or decodes within Rows/Columns
    check(stream)
    if (stream.width, stream.height) != size:
        raise DicomError(name, f"the {stream.kind} codestream is {stream.width} x {stream.height} pixels but "
                               f"Columns x Rows say {size[0]} x {size[1]}; the file is damaged or forged")


def _header(ds):
    """``ds`` without its pixel data (the decoded film holds the pixels), and without the file's
    bytes, which pydicom keeps as ``buffer`` when it read them from memory (a header kept with a
    film would otherwise hold the whole file, and the guard process would send it back)."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            del ds[keyword]
    if getattr(ds, "buffer", None) is not None:
        ds.buffer = None
    return ds


def short_error(err, limit=200):
    """The first line of ``err``'s message, at most ``limit`` characters."""
    text = (str(err).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def dicom_int(ds, keyword, name, default=...):
    """Element ``keyword`` of ``ds`` as int; ``default`` when absent (ImageError when no default)."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is ...:
            raise DicomError(name, f"DICOM file lacks {keyword}")
        return default
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        raise DicomError(name, f"DICOM {keyword} is {str(value)[:40]!r}, not a whole number") from None


def coerce_numeric(ds, name):
    """Window centre/width and rescale slope/intercept as numbers (DS), whatever VR the
    file gave them: text that parses as a number is used, other text is refused naming
    the element. Modalities write these as LO/SH/UN text surprisingly often."""
    from pydicom.valuerep import DSfloat

    for keyword in NUMERIC_ELEMENTS:
        if keyword not in ds:
            continue
        elem = ds[keyword]
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if value is None or (isinstance(value, str) and not value.strip("\x00 ")):
            del ds[keyword]  # an empty element says nothing: as if absent
            continue
        if isinstance(value, str):
            parts = value.split("\\")
        elif isinstance(value, Sequence):  # pydicom's MultiValue
            parts = [str(v) for v in value]
        else:
            parts = [str(value)]
        values = [p.strip().strip("\x00").strip() for p in parts]
        try:
            numbers = [float(v) for v in values if v != ""]
        except (TypeError, ValueError):
            raise DicomError(name, f"DICOM {keyword} is {str(elem.value)[:40]!r}, not a number; "
                                   "fix the element (VR DS) or remove it") from None
        if not numbers or not np.isfinite(numbers).all():
            raise DicomError(name, f"DICOM {keyword} is {str(elem.value)[:40]!r}, not a finite number")
        del ds[keyword]
        setattr(ds, keyword, [DSfloat(v, auto_format=True) for v in numbers] if len(numbers) > 1
                else DSfloat(numbers[0], auto_format=True))


def voi_output_range(ds):
    """(low, high) of the values the VOI stage will output, or None (no VOI: use the film's range).

    Mirrors the rules of pydicom.pixels.apply_voi_lut, which prefers a VOI LUT
    Sequence over a window; the window output spans the stored-value range (after
    rescale), a LUT spans its own entries.
    """
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        lut = seq[0].LUTData
        if isinstance(lut, (bytes, bytearray)):
            lut = np.frombuffer(lut, dtype="<u2" if seq[0].LUTDescriptor[2] > 8 else np.uint8)
        lut = np.asarray(lut)
        return float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, 2.0 ** bits - 1
    else:
        low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def stretch(arr, value_range):
    """Linearly map ``value_range`` (or the array's own min..max) to uint8 0..255."""
    low, high = value_range if value_range is not None else (float(arr.min()), float(arr.max()))
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = arr.astype(np.float64)  # a copy, changed in place: one film-sized float array at a time
    out -= low
    out *= 255.0 / (high - low)
    return np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)


def dicom_meta(ds):
    """(age years | None, sex "M"/"F" | None, view "PA"/"AP" | None) from the DICOM tags
    PatientAge (``045Y``, ``018M``, ``006W``, ``010D``), PatientSex and ViewPosition."""
    age = None
    raw = str(ds.get("PatientAge", "") or "").strip().upper()
    if raw[:-1].isdigit() and raw[-1:] in "DWMY":
        age = int(raw[:-1]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[raw[-1]]
    elif raw.isdigit():
        age = float(raw)
    sex = str(ds.get("PatientSex", "") or "").strip().upper()[:1] or None
    sex = sex if sex in ("M", "F") else None
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    view = view if view in ("PA", "AP") else None
    return age, sex, view
