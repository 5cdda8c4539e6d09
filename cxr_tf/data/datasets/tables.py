"""Reading a release's label tables within limits, and refusing what did not parse whole.

Every table of every adapter is read through ``open_text``: the file is streamed in blocks
(gzip recognised by its magic bytes and inflated block by block), so that a table larger than
``MAX_TABLE_BYTES`` once decompressed (an 8.7 MB gzip bomb that inflates to 11 GB) or a line
longer than ``MAX_LINE_BYTES`` (a 1 GB line) is refused after reading at most the limit,
never whole. After pandas has parsed the text, ``check_parsed`` refuses a table whose rows
were swallowed by an open quote: pandas reads everything from an unmatched ``"`` to the next
``"`` as one field, silently, so half a table can vanish into one cell. No label table of the
supported releases has a field that spans lines, so one that does is that defect.

Each refusal is a ``TableError`` naming the file, the line and the cause, quoting at most
``EXCERPT`` characters of the offending text.
"""

import gzip
import io
import re
import zlib
from pathlib import Path

MAX_TABLE_BYTES = 1 << 30
"""Largest label table, once decompressed (bytes). The largest of the supported releases
(PadChest, MIMIC-CXR metadata) are under 100 MB."""
MAX_LINE_BYTES = 1 << 16
"""Longest line of a label table (bytes). Their lines are under 2 kB."""
EXCERPT = 60
"""Most characters of a table's text quoted in an error."""
_BLOCK = 1 << 20
_LINE_BREAK = re.compile(rb"\r\n?|\n")


class TableError(ValueError):
    """A label table that cannot be used; names the file, line and value, and the fix."""


def excerpt(text):
    """``text`` (str or bytes) as at most ``EXCERPT`` characters, with "..." when cut."""
    if isinstance(text, bytes):
        text = text[:EXCERPT * 4].decode("utf-8", "replace")
    return repr(text[:EXCERPT] + ("..." if len(text) > EXCERPT else ""))


def open_text(path, hint, max_bytes=MAX_TABLE_BYTES, max_line=MAX_LINE_BYTES):
    """A label table's text as a stream, read within ``max_bytes`` (after decompression) and
    ``max_line`` bytes per line. Gzip is recognised by its magic bytes, not the name (a plain
    CSV named ``.gz`` is read as it is); a UTF-8 byte-order mark (Excel's "CSV UTF-8") is
    dropped. ``hint``: what to pass instead of an empty file. TableError naming the file and the
    fix for a table over a limit, a damaged gzip file or text that is not UTF-8 (the line of the
    first bad byte)."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            data = _bounded(path, gzip.GzipFile(fileobj=raw) if packed else raw, packed, max_bytes, max_line)
    except OSError as err:
        raise TableError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise TableError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the table "
                         "as UTF-8 (Excel: \"CSV UTF-8 (Comma delimited)\")") from None
    if not text.strip():
        raise TableError(f"{path}: empty file; {hint}")
    return io.StringIO(text, newline="")


def _bounded(path, stream, packed, max_bytes, max_line):
    """The bytes of ``stream`` read block by block: TableError at the first line over
    ``max_line`` or once past ``max_bytes``, before reading on."""
    blocks, total, line, carry, head = [], 0, 1, 0, b""
    while True:
        try:
            block = stream.read(_BLOCK)
            if block.endswith(b"\r"):  # keep a CRLF in one block
                block += stream.read(1)
        except (EOFError, OSError, zlib.error) as err:  # truncated download, damaged bytes
            if not packed:
                raise
            raise TableError(f"{path}: damaged gzip file ({err}); download the table again or pass the "
                             "uncompressed CSV") from None
        if not block:
            return b"".join(blocks)
        blocks.append(block)
        total += len(block)
        if total > max_bytes:
            raise TableError(f"{path}: more than {max_bytes:,} bytes{' once decompressed' if packed else ''}, over "
                             "the table-size limit (tables.MAX_TABLE_BYTES); is this the release's label table?")
        pieces = _LINE_BREAK.split(block)  # the current line's rest, whole lines, the next line's start
        head = head if carry else pieces[0][:EXCERPT * 4]
        lengths = [carry + len(pieces[0]), *map(len, pieces[1:])]
        if max(lengths) > max_line:
            at = next(i for i, n in enumerate(lengths) if n > max_line)
            raise TableError(f"{path}: line {line + at} is longer than {max_line:,} bytes, the line limit "
                             f"(tables.MAX_LINE_BYTES); it starts {excerpt(head if at == 0 else pieces[at])}")
        line += len(pieces) - 1
        carry, head = (lengths[0], head) if len(pieces) == 1 else (lengths[-1], pieces[-1][:EXCERPT * 4])


def check_parsed(frame, path, first_line=2):
    """Refuse a parsed table (DataFrame of str; its first row on line ``first_line``) with a
    field that spans lines: an open quote that swallowed the rows after it."""
    for column in frame.columns:
        try:
            spans = frame[column].str.contains("\n", regex=False).to_numpy(dtype=bool, na_value=False)
        except AttributeError:  # not a column of text
            continue
        if spans.any():
            row = int(spans.argmax())
            before = sum(int(v.count("\n")) for v in frame.iloc[:row].to_numpy().ravel() if isinstance(v, str))
            value = frame[column].iloc[row]
            raise TableError(f"{path}: line {first_line + row + before}: column {column!r}: a quoted field runs over "
                             f"{value.count(chr(10)) + 1} lines ({excerpt(value)}): a quote left open swallows "
                             "the rows after it; close or remove the quote")
