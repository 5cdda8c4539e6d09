"""Reading films for inference: PNG, JPEG and DICOM, recognised by content.

``read_film(path_or_bytes)`` returns a :class:`Film`: the picture as uint8
greyscale (H, W) with 0 = black and 255 = white (bone bright, air dark, as in the
NIH PNGs), plus what the file says about the patient (DICOM only).

The format is sniffed from the first bytes, never taken from the file name:
PNG (``\\x89PNG``), JPEG (``\\xff\\xd8\\xff``), DICOM (``DICM`` at byte 128, the
Part 10 preamble). Anything else is refused.

DICOM pixels are decoded by the data layer (``cxr_tf.data.dicom``, the reader the
TFRecord builder uses: modality LUT or rescale → VOI LUT or window → 0..255, inverted
for ``MONOCHROME1``; its docstring lists the transfer syntaxes that decode).

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
failure while parsing or decoding is caught and reported per film.
"""

import dataclasses
from pathlib import Path

import numpy as np

from cxr_tf.data.images import FILM_MAX_PIXELS as MAX_PIXELS
from cxr_tf.data.images import (
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    FilmLimits,
    ImageError,
    film_problem,
    is_dicom,
    read_image,
)

__all__ = ["MAX_ASPECT", "MAX_BYTES", "MAX_PIXELS", "MAX_SIDE", "MIN_SIDE", "Film", "FilmError", "Limits",
           "check_size", "read_film", "sniff_format"]

MAX_BYTES = 100 * 2**20
"""Largest file accepted (bytes): a 4,300 × 4,300 16-bit DICOM is ~37 MB uncompressed."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class FilmError(ValueError):
    """A file that cannot be used as a film; the message names the file and why."""


@dataclasses.dataclass
class Film:
    """One film read for inference.

    pixels: uint8 (H, W) greyscale, 0 = black. fmt: "png" | "jpeg" | "dicom".
    age (years), sex ("M"/"F"), view ("PA"/"AP"): from DICOM tags when present, else None.
    header: a DICOM film's pydicom Dataset without its pixel data (the identity that reports
    copy), else None. The file is read and parsed once; everything after uses this value.
    """

    name: str
    pixels: np.ndarray
    fmt: str
    age: float | None = None
    sex: str | None = None
    view: str | None = None
    header: object = dataclasses.field(default=None, repr=False)
    screening: object = None
    """The input gate's ``Screening`` of the film once screened (``Predictor.screen``), else None."""


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
    if is_dicom(data):
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
    """A DICOM film decoded by the data layer's reader (``cxr_tf.data.dicom``: the one the
    TFRecord builder uses), with the patient's age, sex and view from its header."""
    from cxr_tf.data.dicom import DicomError, decode_dicom  # noqa: PLC0415 (pydicom only when a DICOM arrives)

    try:
        pixels, meta, header = decode_dicom(data, name, lambda width, height, bits: check_size(width, height, name,
                                                                                               limits, bits))
    except DicomError as err:
        raise FilmError(str(err)) from None
    return Film(name, pixels, "dicom", *meta, header=header)
