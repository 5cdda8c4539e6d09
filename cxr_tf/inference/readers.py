"""Reading films for inference: PNG, JPEG and DICOM, recognised by content.

``read_film(path_or_bytes)`` returns a :class:`Film`: the picture as uint8
greyscale (H, W) with 0 = black and 255 = white (bone bright, air dark, as in the
NIH PNGs), plus what the file says about the patient (DICOM only).

The format is sniffed from the first bytes, never taken from the file name:
PNG (``\\x89PNG``), JPEG (``\\xff\\xd8\\xff``), DICOM (``DICM`` at byte 128, the
Part 10 preamble). Anything else is refused.

DICOM pipeline (pydicom), in the order the standard applies it:
modality LUT or rescale slope/intercept → VOI LUT or window centre/width (the
first one in the file) → linear scaling of the VOI output range to 0..255 →
inversion for ``MONOCHROME1`` (where 0 is white). Without a VOI LUT or window the
film's own min..max is stretched to 0..255. 16-bit (and 12-bit) data therefore
end up as 8-bit like the training PNGs. Multi-frame files use frame 0.

Limits: ``max_bytes`` (file size, checked before reading a path) and the
plausibility rule shared with the TFRecord builder (``cxr_tf.data.images.FilmLimits``:
pixel count, side, aspect ratio, bit depth), checked from the PNG/JPEG header and
from Rows/Columns/BitsStored for DICOM before any pixel is decoded, so a small
"decompression bomb" claiming 60,000 × 60,000 pixels is refused cheaply. PNG/JPEG
decoding is the builder's ``read_image`` (which also refuses truncated files), so
inference reads pixels exactly as the TFRecord builder did.

Nothing a damaged file can do escapes as anything but :class:`FilmError` (a
``ValueError``) naming the file and the reason: pydicom and OpenCV raise dozens of
exception types on mutated headers (unknown VRs, bad lengths, codec errors), so every
failure while parsing or decoding is caught and reported per film. DICOM numeric
elements (window, rescale) stored as text (e.g. VR LO) are read when the text is a
number, and refused with the element's name when it is not.
"""

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxr_tf.data.images import FILM_MAX_PIXELS as MAX_PIXELS
from cxr_tf.data.images import (
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    FilmLimits,
    ImageError,
    film_problem,
    read_image,
)

__all__ = ["MAX_ASPECT", "MAX_BYTES", "MAX_PIXELS", "MAX_SIDE", "MIN_SIDE", "Film", "FilmError", "Limits",
           "check_size", "read_film", "sniff_format"]

MAX_BYTES = 100 * 2**20
"""Largest file accepted (bytes): a 4,300 × 4,300 16-bit DICOM is ~37 MB uncompressed."""
_NUMERIC_ELEMENTS = ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class FilmError(ValueError):
    """A file that cannot be used as a film; the message names the file and why."""


@dataclasses.dataclass
class Film:
    """One film read for inference.

    pixels: uint8 (H, W) greyscale, 0 = black. fmt: "png" | "jpeg" | "dicom".
    age (years), sex ("M"/"F"), view ("PA"/"AP"): from DICOM tags when present, else None.
    """

    name: str
    pixels: np.ndarray
    fmt: str
    age: float | None = None
    sex: str | None = None
    view: str | None = None


@dataclasses.dataclass(frozen=True)
class Limits(FilmLimits):
    """The limits of ``read_film``: the builder's ``FilmLimits`` plus the file size (bytes)."""

    max_bytes: int = MAX_BYTES


def sniff_format(data):
    """"png", "jpeg" or "dicom" from the first bytes of ``data``; None for anything else."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def read_film(source, name=None, limits=None):
    """Read one film from a path or from bytes.

    source: str/Path of a file, or bytes (then ``name`` labels it in errors).
    Returns a :class:`Film`; raises :class:`FilmError` for anything unusable.
    """
    limits = limits or Limits()
    data, name = _load_bytes(source, name, limits)
    try:
        return _decode(data, name, limits)
    except FilmError:
        raise
    except ImageError as err:
        raise FilmError(str(err)) from None
    except MemoryError:
        raise FilmError(f"{name}: too large to decode in memory; downsample the film before sending it") from None
    except Exception as err:  # noqa: BLE001 - pydicom/OpenCV raise many types on damaged files (see module doc)
        raise FilmError(f"{name}: damaged or unsupported file ({type(err).__name__}: {_short(err)})") from None


def _short(err, limit=200):
    """The first line of ``err``'s message, at most ``limit`` characters."""
    text = (str(err).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _decode(data, name, limits):
    fmt = sniff_format(data)
    if fmt is None:
        raise FilmError(
            f"{name}: not a PNG, JPEG or DICOM file (starts with {data[:8]!r}); "
            "send the film itself, not a report or archive")
    if fmt == "dicom":
        return _read_dicom(data, name, limits)
    pixels = _decode_raster(data, name, limits)
    check_size(pixels.shape[1], pixels.shape[0], name, limits)
    return Film(name=name, pixels=pixels, fmt=fmt)


def check_size(width, height, name, limits=None, bits=None):
    """Raise FilmError when a ``width`` × ``height`` film (``bits`` per sample) is not
    plausible: the builder's rule, ``cxr_tf.data.images.film_problem``."""
    problem = film_problem(width, height, limits or Limits(), bits)
    if problem is not None:
        raise FilmError(f"{name}: {problem}")


def _load_bytes(source, name, limits):
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        path = Path(source)
        name = name or str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise FilmError(f"{name}: no such file") from None
        except OSError as err:
            raise FilmError(f"{name}: cannot read ({err.strerror})") from None
        if path.is_dir():
            raise FilmError(f"{name}: is a directory, not a film")
        if size > limits.max_bytes:
            raise FilmError(f"{name}: {size:,} bytes exceeds the file-size limit of {limits.max_bytes:,} bytes")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise FilmError(f"{name}: cannot read ({err.strerror})") from None
    if not data:
        raise FilmError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise FilmError(f"{name}: {len(data):,} bytes exceeds the file-size limit of {limits.max_bytes:,} bytes")
    return data, name


def _decode_raster(data, name, limits):
    """PNG/JPEG bytes -> uint8 (H, W) greyscale via the builder's reader, which refuses
    truncated files and, from the header alone, films over ``limits.max_pixels``."""
    try:
        return read_image(data, name=name, limits=limits)
    except ImageError as err:
        raise FilmError(str(err)) from None


# --------------------------------------------------------------------------- DICOM

def _read_dicom(data, name, limits):
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, struct.error, unknown VRs, ...
        raise FilmError(f"{name}: corrupt DICOM ({type(err).__name__}: {_short(err)})") from None
    if "PixelData" not in ds:
        raise FilmError(f"{name}: DICOM file has no pixel data (a report or structured document?)")
    width = _dicom_int(ds, "Columns", name)
    height = _dicom_int(ds, "Rows", name)
    bits = _dicom_int(ds, "BitsStored", name, default=None)
    frames = _dicom_int(ds, "NumberOfFrames", name, default=1) or 1
    check_size(width, height, name, limits, bits)
    _coerce_numeric(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        # Frame 0 only: a multi-frame file is never decoded whole (its frame count is not trusted).
        arr = ds.pixel_array if frames == 1 else pydicom.pixels.pixel_array(ds, index=0)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad/compressed pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = getattr(syntax, "name", syntax)
        raise FilmError(f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}): {_short(err)}") from None
    if arr.ndim == 3 and frames > 1 and arr.shape[-1] != 3:
        arr = arr[0]
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = cv2.cvtColor(np.asarray(arr, dtype=np.float32), cv2.COLOR_RGB2GRAY)
            return Film(name, _stretch(arr, None), "dicom", *_dicom_meta(ds))
        raise FilmError(f"{name}: unsupported DICOM photometric interpretation {photometric}")
    if arr.ndim != 2:
        raise FilmError(f"{name}: unexpected DICOM pixel array shape {arr.shape}")
    try:
        arr = apply_modality_lut(arr, ds)
        value_range = _voi_output_range(ds)
        arr = apply_voi_lut(arr, ds)
    except Exception as err:  # noqa: BLE001 - damaged LUT descriptors raise many types
        raise FilmError(f"{name}: bad DICOM LUT or window ({type(err).__name__}: {_short(err)})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all() or (value_range is not None and not np.isfinite(value_range).all()):
        raise FilmError(f"{name}: DICOM rescale or window gives non-finite pixel values")
    pixels = _stretch(arr, value_range)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return Film(name, pixels, "dicom", *_dicom_meta(ds))


def _dicom_int(ds, keyword, name, default=...):
    """Element ``keyword`` of ``ds`` as int; ``default`` when absent (FilmError when no default)."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is ...:
            raise FilmError(f"{name}: DICOM file lacks {keyword}")
        return default
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        raise FilmError(f"{name}: DICOM {keyword} is {str(value)[:40]!r}, not a whole number") from None


def _coerce_numeric(ds, name):
    """Window centre/width and rescale slope/intercept as numbers (DS), whatever VR the
    file gave them: text that parses as a number is used, other text is refused naming
    the element. Modalities write these as LO/SH/UN text surprisingly often."""
    from pydicom.valuerep import DSfloat

    for keyword in _NUMERIC_ELEMENTS:
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
            raise FilmError(f"{name}: DICOM {keyword} is {str(elem.value)[:40]!r}, not a number; "
                            "fix the element (VR DS) or remove it") from None
        if not numbers or not np.isfinite(numbers).all():
            raise FilmError(f"{name}: DICOM {keyword} is {str(elem.value)[:40]!r}, not a finite number")
        del ds[keyword]
        setattr(ds, keyword, [DSfloat(v, auto_format=True) for v in numbers] if len(numbers) > 1
                else DSfloat(numbers[0], auto_format=True))


def _voi_output_range(ds):
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


def _stretch(arr, value_range):
    """Linearly map ``value_range`` (or the array's own min..max) to uint8 0..255."""
    low, high = value_range if value_range is not None else (float(arr.min()), float(arr.max()))
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _dicom_meta(ds):
    """(age years | None, sex "M"/"F" | None, view "PA"/"AP" | None) from DICOM tags."""
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
