"""Reading films into square 8-bit greyscale arrays (OpenCV only; no TensorFlow, so
the builder's worker processes stay light).

Policies, written down once:

- **Colour**: RGB and RGBA are converted to greyscale (ITU-R 601 luma, OpenCV's
  ``BGR2GRAY``). An alpha channel that is not fully opaque is composited onto black
  (the film background); the NIH release's RGBA films are fully opaque.
- **16-bit**: scaled to 8 bits by a per-image min-max window (``min -> 0``,
  ``max -> 255``). 16-bit chest films rarely use the full 0-65535 range (12-bit
  detectors store 0-4095), so a fixed ``>> 8`` would leave them nearly black.
- **Non-square input**: centre-padded with black to a square, then resized. Padding
  keeps all of the anatomy; a centre crop would cut lung apices or costophrenic
  angles, where effusions and pneumothoraces show.
- **Resizing**: area interpolation (``cv2.INTER_AREA``) when shrinking; bilinear when
  enlarging (area interpolation degenerates to nearest neighbour there).
- **DICOM**: a file with the Part 10 preamble (``DICM`` at byte 128) is decoded by
  ``cxr_tf.data.dicom`` (imported then, not before: pydicom stays out of workers that
  never see DICOM): modality LUT / rescale, VOI LUT or window, ``MONOCHROME1`` inverted.
- **Limits**: files whose header announces more than ``MAX_PIXELS`` pixels are
  refused before decoding (decompression-bomb guard); truncated PNG/JPEG files (no
  end marker) are refused rather than decoded half-grey.
- **Plausibility** (``FilmLimits`` / ``check_film``): one rule for the builder and for
  prediction, so a film that ``predict`` refuses is skipped (and listed) by the
  builder too: sides ``MIN_SIDE``..``MAX_SIDE`` px, long/short side ratio at most
  ``MAX_ASPECT``, width × height at most ``max_pixels``, bit depth 1..16. Checked from
  the PNG/JPEG header before decoding, and again on the decoded array.
"""

import dataclasses

import os
import struct
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx: 8k x 8k films pass, bombs do not
MIN_SIDE = 64
"""Smallest side accepted (pixels). Real films are >= 1,000 px; 64 lets small test films
and thumbnails through while refusing icons and 1-pixel files."""
MAX_SIDE = 12_000
"""Largest side accepted (pixels)."""
MAX_ASPECT = 4.0
"""Largest long-side / short-side ratio accepted: a strip is not a chest film."""
FILM_MAX_PIXELS = 50_000_000
"""Largest width x height of a plausible film: ~7,000 x 7,000, well above any detector."""
MAX_BITS = 16
"""Deepest pixel data accepted (bits stored per sample)."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclasses.dataclass(frozen=True)
class FilmLimits:
    """What a plausible chest film is (pixels; ``max_aspect`` long/short side); shared by
    the builder and by prediction (``cxr_tf.inference.readers.Limits`` adds the file size)."""

    max_pixels: int = FILM_MAX_PIXELS
    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    max_aspect: float = MAX_ASPECT
    max_bits: int = MAX_BITS


def film_problem(width, height, limits=None, bits=None):
    """Why a ``width`` x ``height`` film (``bits`` per sample, when known) is not a
    plausible chest film under ``limits`` (``FilmLimits``), as text; None when it is."""
    limits = limits or FilmLimits()
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        return f"{width} x {height} pixels: an image needs at least one pixel per side"
    if width * height > limits.max_pixels:
        return (f"{width} x {height} pixels exceeds the limit of {limits.max_pixels:,} pixels "
                "(possible decompression bomb); downsample the film before sending it")
    if max(width, height) > limits.max_side:
        return f"{width} x {height} pixels; a side above {limits.max_side} px is not a chest film"
    if min(width, height) < limits.min_side:
        return (f"{width} x {height} pixels is too small for a chest film (need at least "
                f"{limits.min_side} px per side)")
    if max(width, height) / min(width, height) > limits.max_aspect:
        return f"{width} x {height} pixels; aspect ratio above {limits.max_aspect:g} is not a chest film"
    if bits is not None and not 1 <= int(bits) <= limits.max_bits:
        return f"{bits} bits per pixel; a film has 1 to {limits.max_bits}"
    return None


def check_film(width, height, name, limits=None, bits=None):
    """Raise ImageError naming ``name`` when ``film_problem`` finds one."""
    problem = film_problem(width, height, limits, bits)
    if problem is not None:
        raise ImageError(name, problem)


class ImageError(ValueError):
    """An input that cannot be read as a film; the message names the file and why.

    ``.file`` and ``.reason`` hold the two parts separately."""

    def __init__(self, file, reason):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = str(file), reason


def is_dicom(data):
    """True when ``data`` (bytes) starts with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    return len(data) >= 132 and data[128:132] == _DICOM_MAGIC


def read_image(source, name=None, max_pixels=MAX_PIXELS, limits=None):
    """Decode a film into a uint8 (H, W) greyscale array, values 0..255.

    source: a path (str or Path) or the file's bytes (PNG, JPEG, DICOM (``cxr_tf.data.dicom``)
    or anything OpenCV decodes); name: how to call the input in errors (default: the path); limits: a
    ``FilmLimits`` to refuse implausible films (from the header, before decoding, and
    on the decoded array), or None for the pixel-count guard alone.
    Raises ImageError naming the file and the reason for empty, truncated, oversized,
    non-image or unsupported input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "<bytes>"
    else:
        name = name or str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(name, "empty file")
    if is_dicom(data):
        return _read_dicom(data, name, max_pixels, limits)
    size = _check_header(data, name, max_pixels if limits is None else min(max_pixels, limits.max_pixels))
    if limits is not None and size is not None:
        check_film(*size, name, limits, bits=_png_bits(data))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV refuses some damaged headers with an exception
        raise ImageError(name, f"not a decodable image ({str(exc).strip().splitlines()[-1]})") from None
    if image is None:
        raise ImageError(name, "not a decodable image")
    if limits is not None:
        check_film(image.shape[1], image.shape[0], name, limits)
    return _to_grey_uint8(image, name)


def _read_dicom(data, name, max_pixels, limits):
    """A DICOM film's pixels (``cxr_tf.data.dicom``, imported now: pydicom only where DICOM is
    met), refused under ``limits`` (or the pixel-count guard alone) before decoding."""
    from cxr_tf.data.dicom import DicomError, decode_dicom  # noqa: PLC0415

    guard = limits if limits is not None else FilmLimits(min_side=1, max_side=2**31, max_aspect=float("inf"))
    guard = dataclasses.replace(guard, max_pixels=min(max_pixels, guard.max_pixels))
    try:
        return decode_dicom(data, name, lambda width, height, bits: check_film(width, height, name, guard, bits))[0]
    except DicomError as err:
        raise ImageError(name, err.reason) from None


def _png_bits(data):
    """Bit depth of a PNG's IHDR, or None for other formats."""
    return data[24] if data.startswith(_PNG_SIGNATURE) and len(data) > 24 else None


def _check_header(data, name, max_pixels):
    """Refuse truncated PNG/JPEG and images announcing more than max_pixels pixels."""
    size = None
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ImageError(name, "truncated PNG (no header)")
        size = struct.unpack(">II", data[16:24])
        if b"IEND" not in data[-64:]:
            raise ImageError(name, "truncated PNG (no IEND chunk)")
        _check_png_chunks(data, name)
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
        if b"\xff\xd9" not in data[-64:]:
            raise ImageError(name, "truncated JPEG (no end-of-image marker)")
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(
            name, f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels exceeds the limit of "
            f"{max_pixels:,} (decompression-bomb guard)")
    return size


def _check_png_chunks(data, name):
    """Refuse a PNG whose chunk lengths run past the end of the file. Measured: OpenCV
    spends 4-8 s of CPU on a 20 kB PNG whose IDAT claims 4 GB, so this is checked first."""
    at = 8
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if at + 12 + length > len(data):
            raise ImageError(name, f"damaged PNG (chunk {kind!r} at byte {at} claims {length:,} bytes; "
                                   f"the file has {len(data):,})")
        if kind == b"IEND":
            return
        at += 12 + length
    raise ImageError(name, "damaged PNG (chunks do not end with IEND)")


def _jpeg_size(data):
    """(width, height) from the first SOF marker, or None when not found."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _to_grey_uint8(image, name):
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            alpha = image[:, :, 3]
            grey = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
            if alpha.min() < np.iinfo(image.dtype).max:
                scale = alpha.astype(np.float32) / np.iinfo(image.dtype).max
                grey = (grey.astype(np.float32) * scale).round().astype(image.dtype)
            image = grey
        else:
            raise ImageError(name, f"unsupported channel count {channels}")
    elif image.ndim != 2:
        raise ImageError(name, f"unsupported image shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        low, high = int(image.min()), int(image.max())
        if high == low:
            return np.zeros(image.shape, np.uint8)
        scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
        return scaled.round().astype(np.uint8)
    raise ImageError(name, f"unsupported pixel type {image.dtype}")


def to_square(image, size):
    """Centre-pad a uint8 (H, W) image with black to a square, then resize it to
    uint8 (size, size): area interpolation when shrinking, bilinear when enlarging."""
    if size < 1:
        raise ValueError(f"image size must be a positive number of pixels, got {size}")
    height, width = image.shape[:2]
    side = max(height, width)
    if height != width:
        top, left = (side - height) // 2, (side - width) // 2
        image = cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left,
                                   cv2.BORDER_CONSTANT, value=0)
    if side == size:
        return np.ascontiguousarray(image)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def encode_png(image):
    """PNG bytes of a uint8 (H, W) greyscale or (H, W, 3) BGR image, written for fast decoding: every row
    "Up"-filtered (difference to the row above) and Huffman-only deflate. On 224 px chest films this
    decodes ~1.45x faster than libpng's adaptive filters (mostly Paeth) for 12 % more bytes, and
    Huffman-only is 8 % smaller than zlib's default strategy with the same filter (tools/bench_png.py).
    Decoding the shards is what bounds training input on a CPU host (tools/bench_input.py)."""
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                                              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise ImageError("<array>", "PNG encoding failed")
    return buffer.tobytes()


def film_to_png(path, size):
    """Worker task of the builder: (png_bytes, None) for a readable, plausible film
    (``FilmLimits``: the rule prediction applies), resized to a (size, size) square,
    or (None, reason) when it cannot be read or is implausible."""
    try:
        return encode_png(to_square(read_image(path, limits=FilmLimits()), size)), None
    except ImageError as exc:
        return None, exc.reason
    except Exception as exc:  # a worker must report, never take the whole build down
        return None, f"{type(exc).__name__}: {exc}"


def encode_films(paths, size):
    """``film_to_png`` for each path (one worker task of the builder)."""
    return [film_to_png(path, size) for path in paths]


def worker_init(parent=None, poll_s=0.5):
    """Initializer of the builder's worker processes: one process per core, so
    OpenCV's own thread pool is switched off; and a daemon thread that ends the worker
    when its parent dies (``kill -9`` of the build: a pool worker blocked on its task
    queue would otherwise live on, orphaned, with the resource tracker beside it).
    parent: the build's pid (passed, not read here: it may already be gone)."""
    cv2.setNumThreads(1)
    parent = os.getppid() if parent is None else parent

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # the parent is gone: nobody will read our results

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def tensorflow_loaded():
    """True when TensorFlow is imported in this process (checked in the workers by tests)."""
    return "tensorflow" in sys.modules
