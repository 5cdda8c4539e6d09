"""Triage web service: ``python -m cxr_tf.serve --model RUN_DIR [--host 127.0.0.1 --port 8000]``.

A FastAPI app over `cxr_tf.inference.predictor.Predictor`, loaded once at start:

- ``POST /api/predict``  multipart field ``files`` (one or several films: PNG, JPEG or
  DICOM, recognised by content). Answers the JSON list of ``predict --json`` sorted by
  urgency; ``?images=1`` adds ``"images": {"film": data-URI, "gradcam": {finding: data-URI}}``
  to each result (what the page shows). ``?format=NAME`` answers instead, in the same
  order, one object per film in a format of ``cxr_tf.inference.outputs`` that answers JSON
  (``fhir``: a FHIR R4 ``Bundle`` per film, with a "cancelled" DiagnosticReport for a film not
  processed); a format whose extra is not installed answers 501 naming what to install.
- ``GET /api/health``, ``GET /api/model`` (architecture, labels, thresholds, split, test AUCs).
- ``GET /`` the single page (``cxr_tf/static/index.html``; no CDN assets).

Contract (``/openapi.json`` describes all of it; ``docs/service.md`` is the reference):
bad input is a 4xx, never a 5xx: no films or a malformed body or query (400), a file
over the size cap, too many files or a body over the request cap (413, sent as soon as
the cap is passed, before the rest of the body is read), a body that is not
multipart/form-data (415), no film processed (422: each unreadable or refused by the input
gate, the "not processed" results in the body); a full prediction queue answers 503 with
``Retry-After``. When some films are processed the answer is 200 and the others are "not
processed" results carrying ``"reason"`` and ``"error"``.

Hardening: the multipart body is parsed from the request stream by python-multipart's
streaming parser into memory (Starlette's form parser spools parts over 1 MB to a
temporary file; patient data must never touch the disk), and the caps are enforced
as bytes arrive. Inference runs on one worker thread, off the event loop, so health
and model routes answer while films are processed; at most ``max_queue`` prediction
requests are admitted at a time (running, waiting or uploading). No file paths
appear in responses.
"""

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import (
    MultipartParser,
    MultipartState,
    parse_options_header,
)

from cxr_tf.inference.extras import MissingExtra
from cxr_tf.inference.outputs import FORMATS, answer_formats

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 32
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_QUEUE = 8
"""Prediction requests admitted at once (one runs, the rest wait); more get 503."""
RETRY_AFTER_S = 5
"""Seconds a client is told to wait (``Retry-After``) when the queue is full."""
_ENVELOPE = 1 << 20
"""Bytes of multipart headers and boundaries allowed on top of the films (request cap)."""


# ------------------------------------------------------------------ response models

class ErrorBody(BaseModel):
    """A refused request: what was wrong and what to do."""

    detail: str


class Triage(BaseModel):
    level: Literal["urgent", "review", "routine"]
    action: str


class FilmImages(BaseModel):
    film: str = Field(description="the film as a PNG data-URI (longest side 512 px)")
    gradcam: dict[str, str] = Field(description="Grad-CAM overlay PNG data-URI per positive finding")
    gradcam_maps: dict[str, dict[str, Any]] = Field(description="per overlay: map status, grid, layer, note")


class GateRecord(BaseModel, extra="allow"):
    """The input gate's record of a film (docs/gate.md): its version, whether the film passed,
    its frontal score and class scores, the reason when refused; or that it was off."""

    version: str | None = None
    passed: bool | None = None
    score: float | None = None
    reason: str | None = None
    off: bool | None = None


class FilmPrediction(BaseModel):
    """The triage of one processed film."""

    file: str = Field(description="the upload's file name")
    status: Literal["processed"]
    probabilities: dict[str, float] = Field(description="MC-dropout mean probability per finding, 0..1")
    uncertainty: dict[str, float] = Field(description="MC-dropout standard deviation per finding")
    findings: list[str] = Field(description="findings at or above the run's thresholds")
    borderline: list[str] = Field(description="findings within k MC standard deviations of their threshold")
    triage: Triage
    message: str
    caveats: list[str] = Field(description="what the run has not shown (docs/triage.md)")
    gate: GateRecord
    images: FilmImages | None = Field(None, description="only with ?images=1")


class FilmFailure(BaseModel):
    """A film received and not processed: the file, the reason code and why (nothing else is lost)."""

    file: str
    status: Literal["not processed"]
    reason: str = Field(description="unreadable, or the input gate's reason: inverted, rotated, lungs_not_in_view, "
                                    "blank, not_radiograph, blurred (docs/gate.md)")
    error: str
    gate: GateRecord | None = None


class FhirResource(BaseModel, extra="allow"):
    """With ``?format=fhir``: a FHIR R4 Bundle per film (see cxr_tf.inference.outputs.fhir)."""

    resourceType: Literal["Bundle"]


class ModelInfo(BaseModel):
    """The loaded run (no file paths)."""

    arch: str | None = None
    image_size: int
    labels: list[str]
    thresholds: dict[str, float]
    thresholds_source: str
    critical: list[str]
    samples: int
    uncertainty_threshold: float
    split_method: str | None = None
    test_metrics: dict[str, Any] | None = None
    notes: list[str]
    gate: dict[str, Any] | None = Field(None, description="the input gate (version, threshold, classes), "
                                                           "or null when it is off")


class Health(BaseModel):
    status: Literal["ok"]


class RequestRefused(Exception):
    """A request refused with ``status`` and ``detail`` (answered as ErrorBody)."""

    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


# ------------------------------------------------------------------ multipart in memory

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


async def read_uploads(request, limit_bytes, max_files):
    """[(file name, bytes)] of the multipart field ``files`` of ``request``, read from its
    stream into memory. Raises RequestRefused: 415 (not multipart), 413 (a file over
    ``limit_bytes``, more than ``max_files`` files, or a body over the request cap:
    checked from Content-Length first, then as bytes arrive), 400 (malformed or no films)."""
    body_cap = max_files * limit_bytes + _ENVELOPE
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
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                raise RequestRefused(413, f"request body exceeds the cap of {body_cap:,} bytes")
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


# ------------------------------------------------------------------ the app

def _errors(*codes):
    """OpenAPI ``responses`` entries for error statuses answered with ErrorBody."""
    text = {400: "malformed request or no films", 413: "a file, the file count or the body over its cap",
            415: "body is not multipart/form-data", 501: "the asked-for format needs an extra this server lacks",
            503: "prediction queue full; retry after Retry-After seconds"}
    out = {code: {"model": ErrorBody, "description": text[code]} for code in codes}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return out


def _request_body(max_files, max_upload_mb):
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {
            "type": "array", "minItems": 1, "maxItems": max_files,
            "items": {"type": "string", "format": "binary"},
            "description": f"films (PNG, JPEG or DICOM, recognised by content), at most {max_files}, "
                           f"each at most {max_upload_mb:g} MB"}}}}}}}


def _predict_all(predictor, uploads, images, answer_format="json"):
    """Worker-thread task: the JSON response of the worklist of ``uploads`` [(name, bytes)],
    each film's answer in ``answer_format`` (``cxr_tf.inference.outputs``). Rendered here, not
    on the event loop: with ``images`` the body is megabytes of base64 that would stall every
    other request while it is encoded."""
    results = [predictor.predict([upload])[0] for upload in uploads]
    if images:
        for result in results:
            predictor.add_images(result)
    results = predictor.worklist(results)
    status = 422 if not any(r.ok for r in results) else 200
    answer = FORMATS[answer_format]
    return JSONResponse([answer.answer(r, predictor) for r in results], status_code=status)


def _model_info(predictor):
    """``predictor.describe()`` without file paths (a client has no business with the server's disk)."""
    info = dict(predictor.describe())
    info.pop("run_dir", None)
    run_dir = str(getattr(predictor, "run_dir", ""))
    if run_dir:
        info["notes"] = [note.replace(run_dir, "RUN_DIR") for note in info.get("notes", [])]
    return info


def create_app(predictor, max_upload_mb=DEFAULT_MAX_UPLOAD_MB, max_files=DEFAULT_MAX_FILES,
               max_queue=DEFAULT_MAX_QUEUE):
    """The FastAPI app serving ``predictor`` (a loaded `cxr_tf.inference.predictor.Predictor`).

    max_upload_mb: cap of one film (MB); max_files: films per request; max_queue:
    prediction requests admitted at once (memory bound: max_queue x max_files x max_upload_mb).
    """
    # One model, one worker thread: predictions run one at a time, off the event loop.
    executor = ThreadPoolExecutor(1, thread_name_prefix="cxr-predict")
    limit_bytes = int(max_upload_mb * (1 << 20))
    admitted = 0  # changed only on the event loop thread, so no lock
    answers = answer_formats()  # the ?format= values: the registry's formats that answer JSON

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="cxr_tf triage", version="1", lifespan=lifespan,
                  description="Chest X-ray triage: see docs/service.md for limits and errors.")

    @app.exception_handler(RequestRefused)
    async def refused(_request, exc):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"bad request: {problems}"}, status_code=400)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health", response_model=Health)
    async def health():
        return {"status": "ok"}

    @app.get("/api/model", response_model=ModelInfo)
    def model_info():
        return JSONResponse(_model_info(predictor))

    @app.post("/api/predict", response_model=list[FilmPrediction | FilmFailure | FhirResource],
              responses={**_errors(400, 413, 415, 501), 422: {"model": list[FilmFailure | FhirResource],
                                                        "description": "no film could be read"},
                         **_errors(503)},
              openapi_extra=_request_body(max_files, max_upload_mb))
    async def predict(request: Request, images: bool = Query(False, description="add film and Grad-CAM images"),
                      format: Literal[answers] = Query("json", description="answer format per film: " + "; ".join(
                          f"{name}: {FORMATS[name].summary}" for name in answers))):
        nonlocal admitted
        try:
            FORMATS[format].check()
        except MissingExtra as err:
            raise RequestRefused(501, f"format={format} is not available on this server: {err}") from None
        if admitted >= max_queue:
            raise RequestRefused(503, f"busy: {admitted} prediction requests in progress; retry in "
                                      f"{RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        admitted += 1
        try:
            uploads = await read_uploads(request, limit_bytes, max_files)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, _predict_all, predictor, uploads, images, format)
        finally:
            admitted -= 1

    return app
