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
bad input is a 4xx, never a 5xx: no films or a malformed body or query (400), a body that
stalls (408), a file over the size cap, too many files or a body over the request cap (413,
sent as soon as the cap is passed, before the rest of the body is read), a body that is not
multipart/form-data (415), no film processed (422: each unreadable or refused by the input
gate, the "not processed" results in the body); a full prediction queue answers 503 with
``Retry-After``. When some films are processed the answer is 200 and the others are "not
processed" results carrying ``"reason"`` and ``"error"``.

Hardening: the body is read into memory under limits on size, time and memory
(`cxr_tf.inference.uploads`). A request takes a prediction slot only once its body has
arrived, so clients that upload slowly hold no slot; at most ``max_queue`` requests hold one
(waiting or running) and more get 503. Inference runs on one worker thread, off the event
loop, so health and model routes answer while films are processed. A client that hangs up is
one log line. No file paths appear in responses.
"""

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from cxr_tf.inference.extras import MissingExtra
from cxr_tf.inference.outputs import FORMATS, answer_formats
from cxr_tf.inference.uploads import ENVELOPE, BodyTiming, MemoryBudget, RequestRefused, busy, read_uploads

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 32
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_QUEUE = 8
"""Prediction requests whose body has arrived admitted at once (one runs, the rest wait); more get 503."""


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
    backend: str = Field(description="keras, litert or onnx (docs/deployment.md)")
    export: str | None = Field(None, description="the export format the backend runs (onnx, litert, "
                                                 "litert-int8); null for keras. Never a path")
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


# ------------------------------------------------------------------ the app

def _errors(*codes):
    """OpenAPI ``responses`` entries for error statuses answered with ErrorBody."""
    text = {400: "malformed request or no films",
            408: "the body stalled: no bytes for the body timeout, or slower than the minimum rate",
            413: "a file, the file count or the body over its cap",
            415: "body is not multipart/form-data", 501: "the asked-for format needs an extra this server lacks",
            503: "prediction queue or upload memory full; retry after Retry-After seconds"}
    out = {code: {"model": ErrorBody, "description": text[code]} for code in codes}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait", "required": True,
                                               "schema": {"type": "integer"}}}
    return out


def _request_body(max_files, max_upload_mb):
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {
            "type": "array", "minItems": 1, "maxItems": max_files,
            "items": {"type": "string", "format": "binary"},
            "description": f"films (PNG, JPEG or DICOM, recognised by content), at most {max_files} "
                           f"(more: 413), each at most {max_upload_mb:g} MB (more: 413). A file that is not "
                           "a usable chest film (unreadable, too small, refused by the input gate) is a "
                           "'not processed' result; when no film is processed the answer is 422"}}}}}}}


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
    """``predictor.describe()`` without file paths (a client has no business with the server's
    disk): no ``run_dir``; ``export`` is the export's format, not its folder; any other text
    naming the run or export folder says RUN_DIR / EXPORT_DIR instead."""
    info = dict(predictor.describe())
    info.pop("run_dir", None)
    export_dir = getattr(predictor, "export_dir", None)
    info["export"] = None if export_dir is None else predictor.sampler.format
    folders = [(str(folder), name) for folder, name in ((export_dir, "EXPORT_DIR"), (predictor.run_dir, "RUN_DIR"))
               if folder is not None]

    def scrub(value):
        if isinstance(value, str):
            for folder, name in folders:
                value = value.replace(folder, name)
            return value
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(item) for item in value]
        return value

    return scrub(info)


def _client(request):
    """``host:port`` of the client (the proxy's forwarded address only from a trusted proxy)."""
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


def create_app(predictor, max_upload_mb=DEFAULT_MAX_UPLOAD_MB, max_files=DEFAULT_MAX_FILES,
               max_queue=DEFAULT_MAX_QUEUE, body_timing=BodyTiming()):
    """The FastAPI app serving ``predictor`` (a loaded `cxr_tf.inference.predictor.Predictor`).

    max_upload_mb: cap of one film (MB); max_files: films per request; max_queue: prediction
    requests admitted at once, counted once their body has arrived; body_timing: how long a
    body may take (`cxr_tf.inference.uploads.BodyTiming`). Request bodies in memory, uploading
    or admitted, are bounded by max_queue x (max_files x max_upload_mb + 1 MB) in all.
    """
    # One model, one worker thread: predictions run one at a time, off the event loop.
    executor = ThreadPoolExecutor(1, thread_name_prefix="cxr-predict")
    limit_bytes = int(max_upload_mb * (1 << 20))
    memory = MemoryBudget(max_queue * (max_files * limit_bytes + ENVELOPE))
    admitted = 0  # requests holding a prediction slot; changed only on the event loop thread, so no lock
    answers = answer_formats()  # the ?format= values: the registry's formats that answer JSON

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="cxr_tf triage", version="1", lifespan=lifespan,
                  description="Chest X-ray triage: see docs/service.md for limits and errors.")

    @app.exception_handler(RequestRefused)
    async def refused(request, exc):
        if exc.status == 408:
            log.warning("408 to %s: %s", _client(request), exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def hung_up(request, _exc):
        log.info("%s %s: the client hung up before its request body was complete", _client(request),
                 request.url.path)
        return Response(status_code=400)  # nobody is there to read it; uvicorn drops it

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

    def check_queue():
        if admitted >= max_queue:
            raise busy(f"{admitted} prediction requests in progress")

    @app.post("/api/predict", response_model=list[FilmPrediction | FilmFailure | FhirResource],
              responses={**_errors(400, 408, 413, 415, 501), 422: {
                  "model": list[FilmFailure | FhirResource],
                  "description": "no film processed: each unreadable, not a usable film, or refused by the gate"},
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
        check_queue()  # full already: say so before the client sends its body
        with memory.share() as take:
            uploads = await read_uploads(request, limit_bytes, max_files, body_timing, take)
            check_queue()  # the slot is taken only now that the body is here
            admitted += 1
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(executor, _predict_all, predictor, uploads, images, format)
            finally:
                admitted -= 1

    return app
