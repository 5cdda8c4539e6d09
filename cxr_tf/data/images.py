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
- **Limits**: a path is read only when it is a regular file (``read_file``: a FIFO or a
  device such as /dev/zero is refused before it is opened). Before any decoder runs, the
  codestream's own header (``cxr_tf.data.codestream``: PNG IHDR, JPEG/JPEG-LS SOF, JPEG 2000
  SIZ; for DICOM, Rows/Columns and frame 0's codestream) is held to the budget
  (``check_budget``): pixels, decoder output bytes (``MAX_DECODED_BYTES``), JPEG scans
  (``MAX_SCANS``) and scans x pixels (``MAX_SCAN_PIXELS``), JPEG 2000 tiles (``MAX_TILES``); truncated PNG/JPEG files (no end marker)
  are refused rather than decoded half-grey. The time and memory of the decode itself are
  bounded by the inference readers' guard process (``cxr_tf.data.decode_guard``).
- **Plausibility** (``FilmLimits`` / ``check_film``): one rule for the builder and for
  prediction, so a film that ``predict`` refuses is skipped (and listed) by the
  builder too: sides ``MIN_SIDE``..``MAX_SIDE`` px, long/short side ratio at most
  ``MAX_ASPECT``, width × height at most ``max_pixels``, bit depth 1..16. Checked from
  the PNG/JPEG header before decoding, and again on the decoded array.
"""

import dataclasses
import os
import stat
import sys
import threading
import time
import cv2
import numpy as np

from cxr_tf.data import codestream

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
MAX_DECODED_BYTES = 256 * 2**20
"""Largest decoder output (bytes) and largest inflated deflate stream: a 50 Mpx 16-bit grey
film is 100 MB, a 7,000 x 7,000 RGB one 147 MB."""
MAX_SCANS = 64
"""Most JPEG scans: progressive JPEGs have 6 (grey) to 10 (colour), mozjpeg's up to a few
dozen (issue 28: a 7,000 px film of 20,000 scans took 184 s)."""
MAX_SCAN_PIXELS = 1_000_000_000
"""Most JPEG decoding work, scans x pixels: each scan is a pass over the whole film (measured,
0.8 ns per pixel and scan: 64 scans of 7,000 x 7,000 took 2.5 s of CPU). 10 scans of a 50 Mpx
film pass; a 7,000 px film may have 20 scans, a 3,900 px one 64."""
MAX_TILES = 4096
"""Most JPEG 2000 tiles: encoders write one, or tiles of 256-1,024 px."""
_DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble


@dataclasses.dataclass(frozen=True)
class FilmLimits:
    """What a plausible chest film is (pixels; ``max_aspect`` long/short side); shared by
    the builder and by prediction (``cxr_tf.inference.readers.Limits`` adds the file size)."""

    max_pixels: int = FILM_MAX_PIXELS
    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    max_aspect: float = MAX_ASPECT
    max_bits: int = MAX_BITS
    max_decoded_bytes: int = MAX_DECODED_BYTES
    max_scans: int = MAX_SCANS
    max_scan_pixels: int = MAX_SCAN_PIXELS
    max_tiles: int = MAX_TILES


BOMB_GUARD = FilmLimits(min_side=1, max_side=2**31, max_aspect=float("inf"), max_bits=64)
"""The budget alone (pixels, decoded bytes, scans, tiles), without the plausibility rule:
what ``read_image`` applies when given no ``limits``."""


def film_problem(width, height, limits=None, bits=None):
    """Why a ``width`` x ``height`` film (``bits`` per sample, when known) is not a
    plausible chest film under ``limits`` (``FilmLimits``), as text; None when it is."""
    limits = limits or FilmLimits()
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        return f"{width} x {height} pixels: an image needs at least one pixel per side"
    if width * height > limits.max_pixels:
        return (f"{width} x {height} = {width * height:,} pixels exceeds the pixel limit of "
                f"{limits.max_pixels:,} (decompression-bomb guard); downsample the film before sending it")
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


def read_file(path, name=None, max_bytes=None):
    """The bytes of the regular file ``path``. Anything else (a FIFO, a device such as
    /dev/zero, a socket, a folder) is refused from ``os.stat`` before it is opened, and
    again from the opened descriptor (opened non-blocking, so a FIFO swapped in between
    cannot hang the reader); ``max_bytes``: refuse a larger file without reading it.
    Raises ImageError naming the file (``name``, default the path)."""
    name = name or str(path)
    try:
        _check_regular(os.stat(path), name)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(name, "no such file; cannot read it") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from None
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        _check_regular(info, name)
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageError(name, f"{info.st_size:,} bytes exceeds the file-size limit of {max_bytes:,} bytes")
        try:
            data = file.read() if max_bytes is None else file.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise ImageError(name, f"more than {max_bytes:,} bytes exceeds the file-size limit")
    return data


def _check_regular(info, name):
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(name, "is a directory, not a film")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                or stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "special")
        raise ImageError(name, f"is {kind}, not a regular file; a film must be a file")


def check_budget(stream, name, limits=None):
    """Raise ImageError naming ``name`` when the ``codestream.Codestream`` ``stream`` is over
    ``limits`` (a ``FilmLimits``; default ``BOMB_GUARD``): the plausibility rule on the
    codestream's own size and depth, then the decoder's output bytes, scans and tiles."""
    limits = limits or BOMB_GUARD
    check_film(stream.width, stream.height, name, limits, bits=stream.bits)
    if stream.decoded_bytes > limits.max_decoded_bytes:
        raise ImageError(name, f"decoding needs {stream.decoded_bytes:,} bytes ({stream.width} x {stream.height} "
                               f"x {stream.channels} samples of {stream.bits} bits), over the decoded-bytes limit "
                               f"of {limits.max_decoded_bytes:,}")
    if stream.scans > limits.max_scans:
        raise ImageError(name, f"a JPEG of {stream.scans:,} scans exceeds the scan limit of {limits.max_scans} "
                               "(each scan is a pass over the whole film)")
    work = stream.scans * stream.width * stream.height
    if work > limits.max_scan_pixels:
        raise ImageError(name, f"a JPEG of {stream.scans} scans over {stream.width} x {stream.height} pixels is "
                               f"{work:,} pixel passes, over the scan-work limit of {limits.max_scan_pixels:,}")
    if stream.tiles > limits.max_tiles:
        raise ImageError(name, f"a JPEG 2000 codestream of {stream.tiles:,} tiles exceeds the tile limit "
                               f"of {limits.max_tiles:,}")


def read_image(source, name=None, max_pixels=MAX_PIXELS, limits=None):
    """Decode a film into a uint8 (H, W) greyscale array, values 0..255.

    source: a path (str or Path; a regular file, see ``read_file``) or the file's bytes (PNG,
    JPEG, DICOM (``cxr_tf.data.dicom``) or anything OpenCV decodes); name: how to call the
    input in errors (default: the path); limits: a ``FilmLimits`` to refuse implausible
    films and films over budget (from the codestream, before decoding, and on the decoded
    array), or None for the budget alone (``BOMB_GUARD``); max_pixels lowers the pixel limit.
    Raises ImageError naming the file and the reason for empty, truncated, oversized,
    non-image or unsupported input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "<bytes>"
    else:
        name = name or str(source)
        data = read_file(source, name)
    if not data:
        raise ImageError(name, "empty file")
    guard = dataclasses.replace(limits or BOMB_GUARD, max_pixels=min(max_pixels, (limits or BOMB_GUARD).max_pixels))
    if is_dicom(data):
        return read_dicom(data, name, guard)[0]
    try:
        stream = codestream.read(data)
    except codestream.CodestreamError as err:
        raise ImageError(name, str(err)) from None
    if stream is not None:
        check_budget(stream, name, guard)
        if stream.kind != "png" and b"\xff\xd9" not in data[-64:]:
            raise ImageError(name, "truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV refuses some damaged headers with an exception
        if exc.code == cv2.Error.StsNoMem:
            raise MemoryError(str(exc)) from None  # the reader's caller names its memory limit
        raise ImageError(name, f"not a decodable image ({str(exc).strip().splitlines()[-1]})") from None
    if image is None:
        raise ImageError(name, "not a decodable image")
    if limits is not None:
        check_film(image.shape[1], image.shape[0], name, limits)
    return _to_grey_uint8(image, name)


def read_dicom(data, name, limits=None):
    """(pixels, (age, sex, view), header) of DICOM Part 10 ``data`` (``cxr_tf.data.dicom``,
    imported now: pydicom only where DICOM is met), refused under ``limits`` (default
    ``BOMB_GUARD``) from its header and from its compressed frame's codestream before decoding."""
    from cxr_tf.data.dicom import DicomError, decode_dicom  # noqa: PLC0415

    limits = limits or BOMB_GUARD
    try:
        return decode_dicom(data, name, lambda stream: check_budget(stream, name, limits), limits.max_decoded_bytes)
    except DicomError as err:
        raise ImageError(name, err.reason) from None


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
    """Worker task of the builders (``path``: a path, or the film's bytes, as the Beam build reads
    them through Beam's filesystems): (png_bytes, None) for a readable, plausible film
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
