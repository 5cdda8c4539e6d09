"""The request body of ``POST /api/predict`` (`cxr_tf.inference.service`), read into memory
under limits on size, time and memory.

python-multipart's streaming parser collects the parts of the field ``files`` as the body
arrives (Starlette's own form parser spools parts over 1 MB to a temporary file; patient
data must never touch the disk). While reading, a request is refused with `RequestRefused`:

- 413 as soon as a film, the number of files or the whole body passes its cap;
- 408 when the body stalls: no byte for ``BodyTiming.timeout`` seconds, or less than
  ``BodyTiming.min_rate`` bytes/s on average after the first ``timeout`` seconds (a client
  trickling one byte a second is cut off like a silent one; the rule of Apache's
  mod_reqtimeout ``body=30,MinRate=...``);
- 503 with ``Retry-After`` when the bodies held in memory by all requests together would
  pass ``MemoryBudget.limit``.

A client that hangs up raises Starlette's ``ClientDisconnect``; the caller logs it.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

ENVELOPE = 1 << 20
"""Bytes of multipart headers and boundaries allowed on top of the films (request cap)."""
RETRY_AFTER_S = 5
"""Seconds a client is told to wait (``Retry-After``) when the service is full."""
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_BODY_MIN_RATE = 8 << 10
"""Bytes/s a body must average after its first ``timeout`` seconds (8 KB/s: a 32 MB film
may take 70 minutes; a client sending one byte a second is cut off after 30 s)."""


class RequestRefused(Exception):
    """A request refused with ``status`` and ``detail`` (answered as ``{"detail": ...}``)."""

    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def busy(detail):
    """The 503 a client gets when the service is full: ``detail`` and when to retry."""
    return RequestRefused(503, f"busy: {detail}; retry in {RETRY_AFTER_S} s",
                          headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(frozen=True)
class BodyTiming:
    """How long a request body may take: ``timeout`` seconds of silence at most (also before
    its first byte), and after the first ``timeout`` seconds at least ``min_rate`` bytes/s on
    average. Either broken: 408."""

    timeout: float = DEFAULT_BODY_TIMEOUT_S
    min_rate: float = DEFAULT_BODY_MIN_RATE

    def __post_init__(self):
        if self.timeout <= 0 or self.min_rate <= 0:
            raise ValueError(f"body timeout {self.timeout:g} s and minimum rate {self.min_rate / 1024:g} KB/s: "
                             "both must be above 0")

    def wait(self, elapsed, received):
        """Seconds the next piece of the body may take, ``elapsed`` s after the request began
        with ``received`` bytes in (<= 0: too slow already)."""
        return min(self.timeout, self.timeout + received / self.min_rate - elapsed)


class MemoryBudget:
    """Bytes of request bodies held in memory by all requests (uploading, waiting or being
    predicted), at most ``limit``. Used on the event loop thread only, so no lock."""

    def __init__(self, limit):
        self.limit, self.held = limit, 0

    @contextlib.contextmanager
    def share(self):
        """A ``take(n)`` for one request: counts ``n`` more bytes against the budget (503 when
        it would pass the limit); all of them are given back when the block ends."""
        taken = 0

        def take(n):
            nonlocal taken
            if self.held + n > self.limit:
                raise busy(f"request bodies in memory reached the {self.limit:,}-byte budget")
            self.held += n
            taken += n

        try:
            yield take
        finally:
            self.held -= taken


class _Uploads:
    """Callbacks of python-multipart's streaming parser: collects the parts of field
    ``files`` into memory, refusing (413) a part over ``limit_bytes`` or more than
    ``max_files`` parts as soon as it happens; other fields are ignored."""

    def __init__(self, limit_bytes, max_files):
        self.limit_bytes, self.max_files = limit_bytes, max_files
        self.files = []  # [(file name, bytearray)]
        self._headers, self._field, self._value, self._current = {}, bytearray(), bytearray(), None

    def callbacks(self):
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data}

    def _part_begin(self):
        self._headers, self._current = {}, None

    def _header_field(self, data, start, end):
        self._field += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"files":
            return
        if len(self.files) >= self.max_files:
            raise RequestRefused(413, f"more than {self.max_files} files: at most {self.max_files} per request")
        name = options.get(b"filename", b"").decode("utf-8", "replace") or f"upload-{len(self.files)}"
        self._current = bytearray()
        self.files.append((Path(name.replace("\\", "/")).name or name, self._current))

    def _part_data(self, data, start, end):
        if self._current is None:
            return
        self._current += data[start:end]
        if len(self._current) > self.limit_bytes:
            raise RequestRefused(413, f"{self.files[-1][0]}: larger than the "
                                      f"{self.limit_bytes / (1 << 20):g} MB upload limit; downsample or "
                                      "compress the film")


async def _timed_chunks(request, timing):
    """The chunks of ``request``'s body as they arrive; RequestRefused(408) when it stalls."""
    loop = asyncio.get_running_loop()
    start, received = loop.time(), 0
    chunks = request.stream().__aiter__()
    while True:
        wait = timing.wait(loop.time() - start, received)
        try:
            async with asyncio.timeout(max(wait, 0)):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestRefused(408, f"request body too slow: {received:,} bytes in {loop.time() - start:.0f} s "
                                      f"(the service waits at most {timing.timeout:g} s for the next bytes and "
                                      f"needs {timing.min_rate / 1024:g} KB/s on average after that)",
                                 headers={"Connection": "close"}) from None
        received += len(chunk)
        yield chunk


async def read_uploads(request, limit_bytes, max_files, timing=BodyTiming(), take=lambda n: None):
    """[(file name, bytes)] of the multipart field ``files`` of ``request``, read from its
    stream into memory; ``take(n)`` is called for every ``n`` bytes received (a
    `MemoryBudget.share`). Raises RequestRefused: 415 (not multipart), 413 (a file over
    ``limit_bytes``, more than ``max_files`` files, or a body over the request cap: checked
    from Content-Length first, then as bytes arrive), 408 (the body stalls, ``timing``),
    400 (malformed or no films), or the 503 of ``take``."""
    body_cap = max_files * limit_bytes + ENVELOPE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_cap:
        raise RequestRefused(413, f"request body of {int(declared):,} bytes exceeds the cap of {body_cap:,} "
                                  f"({max_files} files of at most {limit_bytes / (1 << 20):g} MB)")
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        if declared in (None, "0") and kind == b"":
            raise RequestRefused(400, "no films: send one or more files in the multipart field 'files'")
        raise RequestRefused(415, "send the films as multipart/form-data in the field 'files' "
                                  f"(got Content-Type {request.headers.get('content-type', 'none')!r})")
    uploads = _Uploads(limit_bytes, max_files)
    parser = MultipartParser(options[b"boundary"], uploads.callbacks())
    received = 0
    try:
        async for chunk in _timed_chunks(request, timing):
            received += len(chunk)
            if received > body_cap:
                raise RequestRefused(413, f"request body exceeds the cap of {body_cap:,} bytes")
            take(len(chunk))
            parser.write(chunk)
    except RequestRefused:
        raise
    except ValueError as err:  # python-multipart's MultipartParseError
        raise RequestRefused(400, f"malformed multipart body ({err})") from None
    if parser.state != MultipartState.END:
        raise RequestRefused(400, "malformed multipart body (it ends before the closing boundary)")
    if not uploads.files:
        raise RequestRefused(400, "no films: send one or more files in the multipart field 'files'")
    return [(name, bytes(data)) for name, data in uploads.files]
