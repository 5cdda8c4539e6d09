"""The triage service over a real uvicorn server on loopback, and its page in headless Chromium."""

import io
import shutil
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import FULL_SIZE_FILMS
from cxr_tf.data.labels import LABELS
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.testing import LiveServer

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images"

FILMS = FULL_SIZE_FILMS


@pytest.fixture(scope="module")
def server(tiny_run):
    live = LiveServer(create_app(Predictor(tiny_run, samples=5), max_upload_mb=2, max_files=4)).start()
    yield live
    live.stop()


def post(server, *files, query=""):
    return httpx.post(f"{server.url}/api/predict{query}", files=[("files", f) for f in files], timeout=60)


def png_bytes(width, height):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_health_model_and_openapi(server):
    assert httpx.get(f"{server.url}/api/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/api/model").json()
    assert info["labels"] == list(LABELS)
    assert set(info["thresholds"]) == set(LABELS)
    assert info["arch"] == "simple_cnn"
    assert "/api/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_predict_real_films_matches_predict_json(server, tiny_run):
    films = FILMS[:2]
    resp = post(server, *[(f.name, f.read_bytes()) for f in films])
    assert resp.status_code == 200
    body = resp.json()
    assert sorted(r["file"] for r in body) == sorted(f.name for f in films)
    for result in body:
        assert set(result) == {"file", "status", "probabilities", "uncertainty", "findings", "borderline", "triage",
                               "message", "caveats", "gate"}
        assert list(result["probabilities"]) == list(LABELS)
        assert all(0.0 <= p <= 1.0 for p in result["probabilities"].values())
        assert result["triage"]["level"] in {"urgent", "review", "routine"}
    # The same film through the library gives the same probabilities, to the last bit (one code path,
    # MC draws seeded by the film and the run)
    [direct] = Predictor(tiny_run, samples=5).predict([films[0]])
    served = next(r for r in body if r["file"] == films[0].name)
    assert served["probabilities"] == direct.probabilities


def test_predict_with_images_gives_data_uris(server):
    film = FILMS[0]
    result = post(server, (film.name, film.read_bytes()), query="?images=1").json()[0]
    assert result["images"]["film"].startswith("data:image/png;base64,")
    for name, uri in result["images"]["gradcam"].items():
        assert name in result["findings"] and uri.startswith("data:image/png;base64,")


def truncated_png():
    return FILMS[0].read_bytes()[:5000]


def huge_dimension_png():
    """A valid PNG header claiming 60000×60000 pixels: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, data",
    [
        ("empty.png", b""),
        ("notes.png", b"this is a text file, not a film\n" * 10),
        ("truncated.png", truncated_png()),
        ("bomb.png", huge_dimension_png()),
        ("tiny.png", png_bytes(8, 8)),
    ],
)
def test_bad_upload_is_422_and_service_keeps_serving(server, name, data):
    resp = post(server, (name, data))
    assert resp.status_code == 422
    [result] = resp.json()
    assert result["file"] == name and result["error"]
    assert httpx.get(f"{server.url}/api/health").status_code == 200


def test_one_bad_film_among_good_ones_is_reported_and_others_read(server):
    good = FILMS[1]
    body = post(server, ("broken.png", truncated_png()), (good.name, good.read_bytes())).json()
    by_file = {r["file"]: r for r in body}
    assert "error" in by_file["broken.png"]
    assert "probabilities" in by_file[good.name]


def test_limits_and_missing_files(server):
    assert post(server, ("big.png", b"\0" * (3 << 20))).status_code == 413
    assert post(server, *[(f"f{i}.png", b"x") for i in range(5)]).status_code == 413
    assert httpx.post(f"{server.url}/api/predict", timeout=30).status_code in (400, 422)


def test_page_renders_result_in_headless_chromium(server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium): page test not run")
    playwright = pytest.importorskip("playwright.sync_api")
    film = FILMS[0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        page.set_input_files("#picker", str(film))
        card = page.locator(f'article[data-file="{film.name}"]')
        card.wait_for(timeout=60_000)
        assert not errors, errors
        assert card.locator(".level").inner_text().lower() in {"urgent", "review", "routine"}
        assert card.locator("table tr").count() == len(LABELS) + 1
        assert card.locator("img").first.get_attribute("src").startswith("data:image/png")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_film_the_gate_refuses_is_not_processed_like_in_predict(server):
    from cxr_tf.inference.gate import Gate

    film = np.array(Image.open(SAMPLES / "00000075_000.png").convert("L"))
    inverted, good = io.BytesIO(), io.BytesIO()
    Image.fromarray(255 - film).save(inverted, format="PNG")
    Image.fromarray(film).save(good, format="PNG")
    files = [("inverted.png", inverted.getvalue()), ("good.png", good.getvalue())]
    resp = post(server, *files)
    assert resp.status_code == 200
    by_name = {r["file"]: r for r in resp.json()}
    refused = by_name["inverted.png"]
    assert refused["status"] == "not processed" and refused["reason"] == "inverted" and not refused["gate"]["passed"]
    assert by_name["good.png"]["status"] == "processed" and by_name["good.png"]["gate"]["passed"]
    alone = post(server, files[0])
    assert alone.status_code == 422 and alone.json()[0]["reason"] == "inverted"
    [bundle] = post(server, files[0], query="?format=fhir").json()
    [report] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert report["status"] == "cancelled" and report["conclusionCode"][0]["coding"][0]["code"] == "NOT_PROCESSED_INVERTED"
    assert httpx.get(f"{server.url}/api/model").json()["gate"]["version"] == Gate().version
