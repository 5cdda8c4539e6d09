"""What a film's compressed pixels say about themselves, read from the codestream's own
header without decoding: the size, samples and bit depth a decoder will allocate for, and the
JPEG scan count it will loop over. The readers refuse a film on these figures before any
decoder runs (``cxr_tf.data.images.check_budget``), because a decoder trusts its codestream,
not the container around it: a DICOM whose Rows/Columns say 256 x 256 can hold a JPEG-LS
codestream of 46,000 x 46,000 pixels, and a 280 KB progressive JPEG can hold 20,000 scans.

Formats: PNG (IHDR), JPEG (the first start-of-frame segment, any process, and JPEG-LS's
SOF55), JPEG 2000 (the SIZ segment, in a raw codestream or a JP2 file). Nothing here
decodes pixels or imports a codec; each parser reads a few dozen bytes, and the JPEG scan
count is one ``bytes.count``.
"""

import dataclasses
import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
             0xF7}  # 0xF7: JPEG-LS SOF55
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size segment
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
"""Channels OpenCV returns per PNG colour type (grey, RGB, palette -> BGR(A), grey+alpha -> BGRA, RGBA)."""


class CodestreamError(ValueError):
    """A codestream header that cannot be read (its ``reason``, without a file name)."""


@dataclasses.dataclass(frozen=True)
class Codestream:
    """A codestream's own account of the picture it holds."""

    kind: str
    """"png", "jpeg", "jpeg-ls" or "jpeg2000"."""
    width: int
    height: int
    channels: int
    """Samples per pixel as the decoder returns them."""
    bits: int
    """Bits per sample (the decoder stores more than 8 in two bytes)."""
    scans: int = 1
    """JPEG start-of-scan markers: one for a baseline JPEG, a handful for a progressive one."""
    tiles: int = 1
    """JPEG 2000 tiles."""

    @property
    def decoded_bytes(self):
        """Bytes of the decoder's output array."""
        return self.width * self.height * self.channels * (2 if self.bits > 8 else 1)


def read(data):
    """The ``Codestream`` of PNG, JPEG (JPEG-LS too) or JPEG 2000 bytes; None for other
    data (DICOM RLE, raw pixels). Raises CodestreamError when the header is damaged."""
    if data.startswith(PNG_SIGNATURE):
        return png(data)
    if data.startswith(b"\xff\xd8"):
        return jpeg(data)
    if data.startswith(_J2K_SIZ) or data[4:12] == b"jP  \r\n\x87\n":
        return jpeg2000(data)
    return None


def png(data):
    """From the IHDR chunk, and the chunk lengths checked against the file: measured,
    OpenCV spends 4-8 s of CPU on a 20 kB PNG whose IDAT claims 4 GB."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise CodestreamError("truncated PNG (no header)")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if b"IEND" not in data[-64:]:
        raise CodestreamError("truncated PNG (no IEND chunk)")
    at = 8
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if at + 12 + length > len(data):
            raise CodestreamError(f"damaged PNG (chunk {kind!r} at byte {at} claims {length:,} bytes; "
                                  f"the file has {len(data):,})")
        if kind == b"IEND":
            return Codestream("png", width, height, _PNG_CHANNELS.get(colour, 4), depth)
        at += 12 + length
    raise CodestreamError("damaged PNG (chunks do not end with IEND)")


def jpeg(data):
    """From the first start-of-frame segment (segments are walked by their lengths, so an
    EXIF thumbnail is skipped). ``scans`` counts FF DA: inside entropy-coded data an FF is
    always followed by 00 or a restart marker, so the count is exact up to FF DA bytes in
    metadata segments, which only make it larger."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in _JPEG_SOF:
            precision, height, width, components = struct.unpack(">BHHB", data[i + 4:i + 10])
            return Codestream("jpeg-ls" if marker == 0xF7 else "jpeg", width, height, components, precision,
                              scans=data.count(b"\xff\xda"))
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 2 if marker != 0xFF else 1
            continue
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise CodestreamError("damaged JPEG (no start-of-frame header)")


def jpeg2000(data):
    """From the SIZ segment: the image area less its offset, the components and the
    deepest component's bits, and the number of tiles."""
    at = data.find(_J2K_SIZ)
    if at < 0 or len(data) < at + 46:
        raise CodestreamError("damaged JPEG 2000 (no SIZ header)")
    (x, y, x0, y0, tile_w, tile_h, tile_x0, tile_y0,
     components) = struct.unpack(">IIIIIIIIH", data[at + 8:at + 42])
    if not (x > x0 and y > y0 and tile_w and tile_h and components) or len(data) < at + 42 + 3 * components:
        raise CodestreamError("damaged JPEG 2000 (impossible SIZ header)")
    bits = max((data[at + 42 + 3 * c] & 0x7F) + 1 for c in range(components))
    tiles = -(-(x - tile_x0) // tile_w) * -(-(y - tile_y0) // tile_h)
    return Codestream("jpeg2000", x - x0, y - y0, components, bits, tiles=tiles)
