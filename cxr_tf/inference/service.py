"""Triage web service: ``python -m cxr_tf.serve --model RUN_DIR [--host 127.0.0.1 --port 8000]``.

A FastAPI app over `cxr_tf.inference.predictor.Predictor`, loaded once at start:

- ``POST /api/predict``  multipart field ``files`` (one or several films: PNG, JPEG or
  DICOM, recognised by content). Answers the JSON list of ``predict --json`` sorted by
  urgency; ``?images=1`` adds ``"images": {"film": data-URI, "gradcam": {finding: data-URI}}``
  to each result (what the page shows). ``?format=fhir`` answers instead, in the same
  order, one FHIR R4 ``Bundle`` per film (``cxr_tf.inference.fhir``) and an
  ``OperationOutcome`` for each film that could not be read.
- ``GET /api/health``, ``GET /api/model`` (architecture, labels, thresholds, split, test AUCs).
- ``GET /`` the single page (``cxr_tf/static/index.html``; no CDN assets).

Bad input is a 4xx, never a 5xx: no files (400), a file over the size cap or too many
files (413), and every film unreadable (422, the per-file errors in the body). When some
films are readable the answer is 200 and the unreadable ones carry ``"error"``.
Uploads are read into memory up to the cap; nothing is written to disk.
"""

import threading
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 32
DEFAULT_MAX_FILES = 16
_CHUNK = 1 << 20


async def _read_capped(upload, limit_bytes):
    """The upload's bytes; HTTP 413 naming the file once it passes ``limit_bytes``."""
    data = bytearray()
    while chunk := await upload.read(_CHUNK):
        data += chunk
        if len(data) > limit_bytes:
            raise HTTPException(
                413, f"{upload.filename}: larger than the {limit_bytes // (1 << 20)} MB upload limit"
            )
    return bytes(data)


def create_app(predictor, max_upload_mb=DEFAULT_MAX_UPLOAD_MB, max_files=DEFAULT_MAX_FILES):
    """The FastAPI app serving ``predictor`` (a loaded `cxr_tf.inference.predictor.Predictor`)."""
    app = FastAPI(title="cxr_tf triage", version="1")
    # One model, many request threads: predictions run one at a time.
    lock = threading.Lock()
    limit_bytes = max_upload_mb << 20

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health():
        return {"status": "ok"}

    @app.get("/api/model")
    def model_info():
        return predictor.describe()

    @app.post("/api/predict")
    async def predict(files: list[UploadFile] = File(default=[]), images: bool = Query(False),
                      format: str = Query("json", pattern="^(json|fhir)$")):
        if not files:
            raise HTTPException(400, "no films: send one or more files in the multipart field 'files'")
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files: at most {max_files} per request")
        uploads = [(f.filename or f"upload-{i}", await _read_capped(f, limit_bytes)) for i, f in enumerate(files)]
        with lock:
            results = [predictor.predict_bytes(name, data, images=images) for name, data in uploads]
        data_of = {id(r): data for r, (_, data) in zip(results, uploads)}  # worklist keeps the objects
        results = predictor.worklist(results)
        status = 422 if all("error" in r for r in results) else 200
        if format == "fhir":
            from cxr_tf.inference.outputs import fhir_answer

            with lock:
                results = [fhir_answer(predictor, r, data_of[id(r)]) for r in results]
        return JSONResponse(results, status_code=status)

    return app
