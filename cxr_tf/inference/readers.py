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

Limits (``Limits``; every one, when exceeded, is a ``FilmError`` that names it):
``max_bytes`` (file size, from ``os.stat`` before a path is read; a FIFO, a device or
another non-regular file is refused before it is opened); the plausibility rule shared with
the TFRecord builder (``cxr_tf.data.images.FilmLimits``: pixel count, side, aspect ratio,
bit depth) and the decoding budget (decoded bytes, JPEG scans, JPEG 2000 tiles), both read
from the codestream itself before any pixel is decoded (PNG IHDR, JPEG/JPEG-LS SOF, JPEG
2000 SIZ; DICOM Rows/Columns and its compressed frame's codestream; a deflated DICOM is
inflated once, counted, to the decoded-bytes limit); and the time and memory of the decode
itself (``decode_seconds``, ``decode_memory``: a child process, ``cxr_tf.data.decode_guard``).
PNG/JPEG decoding is the builder's ``read_image`` (which also refuses truncated files), so
inference reads pixels exactly as the TFRecord builder did.

Nothing a damaged file can do escapes as anything but :class:`FilmError` (a
``ValueError``) naming the file and the reason: pydicom and OpenCV raise dozens of
exception types on mutated headers (unknown VRs, bad lengths, codec errors), so every
failure while parsing or decoding is caught and reported per film.
"""

import dataclasses
import threading

import numpy as np

from cxr_tf.data.decode_guard import DecodeGuard
from cxr_tf.data.dicom import short_error
from cxr_tf.data.images import FILM_MAX_PIXELS as MAX_PIXELS
from cxr_tf.data.images import (
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    FilmLimits,
    ImageError,
    is_dicom,
    read_dicom,
    read_file,
    read_image,
)

__all__ = ["DECODE_MEMORY", "DECODE_SECONDS", "MAX_ASPECT", "MAX_BYTES", "MAX_PIXELS", "MAX_SIDE", "MIN_SIDE", "Film",
           "FilmError", "Limits", "read_film", "sniff_format"]

MAX_BYTES = 100 * 2**20
"""Largest file accepted (bytes): a 4,300 × 4,300 16-bit DICOM is ~37 MB uncompressed."""

DECODE_SECONDS = 8.0
"""CPU seconds one film may take to decode (wall clock: 3x). The codestream checks answer every
known bomb in milliseconds; this bounds the unknown ones without refusing a large lossless JPEG
2000 film (OpenJPEG: 2.7 s of CPU at 3,000 px, ~5.5 s at 4,300 px)."""
DECODE_MEMORY = 2**30
"""Address space one film's decoder may add to its process (bytes)."""

_GUARDS, _GUARDS_LOCK = {}, threading.Lock()
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
    """The limits of ``read_film``: the builder's ``FilmLimits`` (plausibility, and the
    decoding budget read from the codestream) plus the file size (bytes) and the time and
    memory one film may take to decode (``cxr_tf.data.decode_guard``; ``decode_seconds=None``
    decodes in this process, under the codestream checks alone)."""

    max_bytes: int = MAX_BYTES
    decode_seconds: float | None = DECODE_SECONDS
    decode_memory: int = DECODE_MEMORY


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
        raise FilmError(f"{name}: damaged or unsupported file ({type(err).__name__}: {short_error(err)})") from None


def _decode(data, name, limits):
    fmt = sniff_format(data)
    if fmt is None:
        raise FilmError(
            f"{name}: not a PNG, JPEG or DICOM file (starts with {data[:8]!r}); "
            "send the film itself, not a report or archive")
    if limits.decode_seconds is None:  # in this process, under the codestream checks alone
        pixels, meta, header = (read_dicom(data, name, limits) if fmt == "dicom"
                                else (read_image(data, name, limits=limits), None, None))
    else:
        pixels, meta, header = _guard(limits).decode(data, name, limits, fmt == "dicom")
    return Film(name, pixels, fmt, *(meta or (None, None, None)), header=header)


def _guard(limits):
    """The ``DecodeGuard`` of ``limits``' time and memory limits (one per pair, kept for the process)."""
    key = (limits.decode_seconds, limits.decode_memory)
    with _GUARDS_LOCK:
        if key not in _GUARDS:
            _GUARDS[key] = DecodeGuard(*key)
        return _GUARDS[key]


def _load_bytes(source, name, limits):
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        name = name or str(source)
        try:
            data = read_file(source, name, limits.max_bytes)  # a regular file, else refused before opening
        except ImageError as err:
            raise FilmError(str(err)) from None
    if not data:
        raise FilmError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise FilmError(f"{name}: {len(data):,} bytes exceeds the file-size limit of {limits.max_bytes:,} bytes")
    return data, name
