"""Small files that cost a naive reader gigabytes or minutes, made at run time (never
committed): the films of issue 28's table, and seeded byte mutations of good films. Used by
``tests/inference/test_reader_budgets.py``, ``tests/inference/test_readers_fuzz.py`` and
``tools/fuzz_readers.py``.

Each bomb is a valid container around a codestream that lies or explodes: a JPEG-LS frame
whose start-of-frame says 46,000 x 46,000 under a DICOM header of 256 x 256, a deflated DICOM
of zeros, a progressive JPEG of thousands of scans, PNGs of zeros within the pixel limit.
Zeros are written through a streaming compressor, so no generator holds what its bomb
inflates to."""

import io
import struct
import zlib

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
)
from PIL import Image

_CHUNK = 16 * 2**20


def _dataset(rows, cols, syntax, bits=16):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.28"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset("bomb.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def _save(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_ls_frame(side, body=64 * 1024):
    """A JPEG-LS codestream (SOI, SOF55, SOS, ``body`` zero bytes, EOI) of ``side`` x ``side``
    16-bit grey: its decoder allocates for ``side``², whatever the container says."""
    sof = b"\xff\xf7" + struct.pack(">HBHHB", 11, 16, side, side, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
    return b"\xff\xd8" + sof + sos + bytes(body) + b"\xff\xd9"


def jpeg2000_frame(side, body=64 * 1024):
    """A JPEG 2000 codestream (SOC, SIZ of one tile, ``body`` zero bytes, EOC) of ``side``²."""
    siz = b"\xff\x51" + struct.pack(">HHIIIIIIIIH", 41, 0, side, side, 0, 0, side, side, 0, 0, 1) + b"\x0f\x01\x01"
    return b"\xff\x4f" + siz + bytes(body) + b"\xff\xd9"


def jpeg_ls_dicom(header_side=256, stream_side=46_000):
    """Issue 28's 64 KB film: Rows/Columns ``header_side``, a JPEG-LS frame of ``stream_side``²."""
    ds = _dataset(header_side, header_side, JPEGLSLossless)
    ds.PixelData = encapsulate([jpeg_ls_frame(stream_side)])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def jpeg2000_dicom(header_side=256, stream_side=46_000):
    """As ``jpeg_ls_dicom`` with a JPEG 2000 frame."""
    ds = _dataset(header_side, header_side, JPEG2000Lossless)
    ds.PixelData = encapsulate([jpeg2000_frame(stream_side)])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def deflated_dicom(inflated=2 * 2**30, side=256):
    """A deflated-syntax DICOM whose data set inflates to about ``inflated`` bytes: a
    ``side``² header over a Pixel Data element of zeros (2 GiB -> about 2 MB of deflate)."""
    ds = _dataset(side, side, DeflatedExplicitVRLittleEndian)
    head = pydicom.filebase.DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(ds.preamble + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_bytes = min(inflated, 0xFFFFFFFE) & ~1
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [head.getvalue(), compressor.compress(body.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00"
                                                  + struct.pack("<I", pixel_bytes))]
    zeros = bytes(min(_CHUNK, pixel_bytes))
    for start in range(0, pixel_bytes, len(zeros)):
        parts.append(compressor.compress(zeros[:pixel_bytes - start]))
    return b"".join(parts + [compressor.flush()])


def progressive_jpeg(side=7000, scans=20_000):
    """A grey progressive JPEG of ``side``² whose last scan is repeated up to ``scans`` scans:
    each scan is a pass of the decoder over the whole film (issue 28: 7,000 px, 20,000 scans,
    280 KB, 184 s)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # the last scan: SOS header and its entropy-coded data, before EOI
    have = data.count(b"\xff\xda")
    return data[:-2] + scan * max(0, scans - have) + b"\xff\xd9"


def png_of_zeros(width, height, colour=0, depth=8):
    """A PNG of ``width`` x ``height`` zeros (``colour``: PNG colour type, ``depth``: bits),
    deflated row by row: a 7,000² 16-bit RGBA one is 392 MB of pixels in about 400 kB."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = bytes(1 + width * channels * depth // 8)
    compressor = zlib.compressobj(9)
    rows_per_chunk = max(1, _CHUNK // len(row))
    idat = []
    for start in range(0, height, rows_per_chunk):
        idat.append(compressor.compress(row * min(rows_per_chunk, height - start)))
    idat = b"".join(idat + [compressor.flush()])

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encapsulated_dicom(pixels, syntax=None):
    """Part 10 bytes of uint16 ``pixels`` (12 bits stored), native (``syntax`` None) or
    compressed with ``syntax``: JPEG 2000 by Pillow (OpenJPEG), deflate by pydicom as it saves,
    others by pydicom's encoders (JPEG-LS needs pyjpegls). Good films, and seeds for fuzzing the compressed readers."""
    ds = _dataset(*pixels.shape, syntax if syntax in (JPEG2000Lossless, DeflatedExplicitVRLittleEndian)
                  else ExplicitVRLittleEndian)  # pydicom deflates the data set as it saves it
    ds.BitsStored, ds.HighBit = 12, 11
    pixels = pixels.astype(np.uint16)
    if syntax == JPEG2000Lossless:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "I;16").save(buffer, "JPEG2000", no_jp2=True, irreversible=False)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
        if syntax not in (None, DeflatedExplicitVRLittleEndian):
            ds.compress(syntax, pixels)
    return _save(ds)


def mutate(data, rng, start=0, stop=None):
    """``data`` with a few bytes in [start, stop) overwritten, inserted, deleted or the
    tail cut: the damage a bad disk, a broken export or a hostile sender does."""
    stop = len(data) if stop is None else stop
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        if min(stop, len(buf)) <= start:
            break
        at = int(rng.integers(start, min(stop, len(buf))))
        kind = rng.integers(0, 100)
        if kind < 80:
            buf[at] = int(rng.integers(0, 256))
        elif kind < 88:
            buf[at:at + 4] = bytes([0xFF, 0xFF, 0xFF, 0xFF])  # a huge length / size field
        elif kind < 93:
            buf[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 8))).astype(np.uint8))
        elif kind < 98:
            del buf[at:at + int(rng.integers(1, 8))]
        else:
            del buf[at + 1:]
    return bytes(buf)
