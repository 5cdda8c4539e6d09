"""The hardened service on a real uvicorn server on loopback: uploads stay in memory and
are capped while streaming, health answers while films are processed, a full queue
answers 503 (and slow uploads hold no slot), damaged DICOM among good films, no paths in
responses, and schemathesis against the live /openapi.json with all its checks."""

import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import twelve_bit_dicom as dicom_bytes

from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.testing import LiveServer

FILMS = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
BOUNDARY = "cxrboundary7d3a"


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor(tiny_run, samples=5)


@pytest.fixture(scope="module")
def server(predictor):
    live = LiveServer(create_app(predictor, max_upload_mb=4, max_files=4, max_queue=4)).start()
    yield live
    live.stop()


def part_header(name="film.dcm"):
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def raw_request(url, path, headers):
    """A socket with an HTTP/1.1 request line and ``headers`` sent; the body is the caller's."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def answered(sock, wait=0.0):
    """The status code the server has sent on ``sock`` by now (after ``wait`` s), else None."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return None
    head = sock.recv(65536)
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1") else None


def open_temp_files():
    """Paths under the temp folder that this process (the server) holds open now."""
    temp = os.path.realpath(tempfile.gettempdir())
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with_target = os.path.join("/proc/self/fd", fd)
        try:
            target = os.readlink(with_target)
        except OSError:
            continue
        if target.startswith((temp + "/", "/dev/shm/", "/var/tmp/")):
            held.append(target)
    return held


def test_two_megabyte_upload_is_never_written_to_a_temp_file(server):
    """Starlette's own parser spools a part over 1 MB to a (deleted) temp file; ours must not."""
    film = dicom_bytes(rows=1024, cols=1024)  # 2 MB of 16-bit pixels
    assert len(film) > 2 << 20
    body = part_header("big.dcm") + film + f"\r\n--{BOUNDARY}--\r\n".encode()
    before_open = open_temp_files()
    sock = raw_request(server.url, "/api/predict", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                                                     "Content-Length": len(body), "Connection": "close"})
    seen = []
    for start in range(0, len(body) - 4096, 256 << 10):  # the server parses while the body trickles in
        sock.sendall(body[start:start + (256 << 10)])
        time.sleep(0.02)
        seen += open_temp_files()
    sock.sendall(body[start + (256 << 10):])
    status = answered(sock, wait=60)
    sock.close()
    assert status == 200
    assert seen is not None and not [p for p in seen if p not in before_open], seen


def test_declared_300_mb_body_is_refused_before_it_is_sent(server):
    sock = raw_request(server.url, "/api/predict", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                                                     "Content-Length": 300 << 20})
    assert answered(sock, wait=10) == 413  # nothing of the body sent yet
    sock.close()


def test_streamed_body_is_cut_off_at_the_cap_not_read_to_the_end(server):
    """Chunked (no Content-Length) 300 MB body: 413 arrives once the film passes its 4 MB cap."""
    sock = raw_request(server.url, "/api/predict", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                                                     "Transfer-Encoding": "chunked"})
    chunk = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    sent, status = 0, None
    first = part_header("huge.dcm")
    sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
    try:
        while sent < 300 << 20 and status is None:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            status = answered(sock)
    except (BrokenPipeError, ConnectionResetError):
        status = answered(sock, wait=5)
    sock.close()
    assert status == 413
    assert sent < 32 << 20, f"{sent >> 20} MB sent before the refusal"


def test_health_answers_while_predictions_run(server):
    """Two clients keep 4-film ?images=1 predictions running; health keeps answering, far
    faster than a prediction takes (with inference on the event loop it waited for each)."""
    files = [("files", (f.name, f.read_bytes())) for f in FILMS[:4]]
    predict_ms, running = [], threading.Event()
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                running.set()
                start = time.perf_counter()
                assert client.post(f"{server.url}/api/predict?images=1", files=files).status_code == 200
                predict_ms.append((time.perf_counter() - start) * 1000)

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    health_ms = []
    try:
        running.wait(30)
        # steady state: the first predictions trace the model (~0.75 s, GIL-bound), and health
        # answers measured during that trace made the ratio below fail 1 run in 4-5 (2026-12-02)
        deadline = time.monotonic() + 120
        while len(predict_ms) < 2 and time.monotonic() < deadline and all(w.is_alive() for w in workers):
            time.sleep(0.05)
        with httpx.Client(timeout=30) as client:
            # the load runs on until both are measured (a client whose prediction failed has stopped)
            while (len(predict_ms) < 8 or len(health_ms) < 10) and all(w.is_alive() for w in workers):
                start = time.perf_counter()
                assert client.get(f"{server.url}/api/health").status_code == 200
                health_ms.append((time.perf_counter() - start) * 1000)
                time.sleep(0.01)
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    assert len(predict_ms) >= 8 and len(health_ms) >= 10, (predict_ms, health_ms)
    # Relative, not a timed threshold: health's p95 is a small fraction of one prediction.
    assert np.percentile(health_ms, 95) < 0.25 * np.median(predict_ms), (health_ms, predict_ms)


def slow_client(url, declared=10_000):
    """A socket whose request has sent its headers and the first part's headers: an upload that
    has begun and will trickle on (``declared`` bytes of body promised)."""
    sock = raw_request(url, "/api/predict", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                                              "Content-Length": declared})
    sock.sendall(part_header())
    return sock


def test_slow_clients_hold_no_prediction_slot(server):
    """Issue 28: 8 clients sending 1 byte/s held every slot of the 4-slot queue, so everyone
    else got 503 for 90 s. A slot is now taken only once a body has arrived: a normal client
    gets 200 every time while the 8 keep trickling (and they are not refused either)."""
    slow = [slow_client(server.url) for _ in range(8)]
    stop = threading.Event()

    def trickle():
        while not stop.wait(1.0):
            for sock in slow:
                sock.sendall(b"x")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        time.sleep(1.2)  # the server has begun all 8 requests and has had bytes of each
        film = ("a.png", FILMS[0].read_bytes())
        with httpx.Client(timeout=60) as client:
            statuses = [client.post(f"{server.url}/api/predict", files={"files": film}).status_code
                        for _ in range(5)]
        assert statuses == [200] * 5
        assert [answered(sock) for sock in slow] == [None] * 8  # still uploading: neither refused nor timed out
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()


def test_bodies_in_memory_have_a_budget(predictor):
    """Uploads in progress hold no slot, so their memory has its own bound, max_queue x the
    request cap (here 1 x (1 file x 1 MB + 1 MB) = 2 MB): with two stalled uploads holding
    1 MB each, a third body gets 503 with Retry-After once it passes the remaining ~97 kB."""
    live = LiveServer(create_app(predictor, max_upload_mb=1, max_files=1, max_queue=1)).start()
    try:
        held = [slow_client(live.url, declared=2 << 20) for _ in range(2)]
        for sock in held:
            sock.sendall(b"\0" * 1_000_000)
        time.sleep(0.3)
        other, sent, status = slow_client(live.url, declared=2 << 20), 0, None
        try:
            while sent < 1_000_000 and status is None:
                other.sendall(b"\0" * (16 << 10))
                sent += 16 << 10
                status = answered(other, wait=0.02)
        except (BrokenPipeError, ConnectionResetError):
            status = answered(other, wait=5)
        assert status == 503 and sent < 400_000, (status, sent)
        for sock in [other, *held]:
            sock.close()
        time.sleep(0.3)  # the budget is given back when the uploads end
        resp = httpx.post(f"{live.url}/api/predict", files={"files": ("a.png", FILMS[0].read_bytes())}, timeout=60)
        assert resp.status_code == 200
    finally:
        live.stop()


def test_full_queue_answers_503_with_retry_after(predictor):
    """One slot: six complete 4-film requests sent at once; the first admitted holds the slot
    while its Grad-CAM runs (hundreds of ms), the others arrive meanwhile and get 503."""
    live = LiveServer(create_app(predictor, max_upload_mb=4, max_files=4, max_queue=1)).start()
    files = [("files", (f.name, f.read_bytes())) for f in FILMS[:4]]
    start = threading.Barrier(6)

    def post(_):
        start.wait()
        return httpx.post(f"{live.url}/api/predict?images=1", files=files, timeout=120)

    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(6)))
        statuses = sorted(resp.status_code for resp in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}, statuses
        for resp in answers:
            if resp.status_code == 503:
                assert int(resp.headers["Retry-After"]) > 0 and "retry" in resp.json()["detail"]
        assert httpx.get(f"{live.url}/api/health", timeout=10).status_code == 200
        resp = httpx.post(f"{live.url}/api/predict", files={"files": ("a.png", FILMS[0].read_bytes())}, timeout=60)
        assert resp.status_code == 200  # the slot is free again
    finally:
        live.stop()


def test_damaged_dicom_among_good_films_costs_them_nothing(server, predictor, tmp_path):
    text_window = dicom_bytes(text={"WindowCenter": "2048", "WindowWidth": "4096"})
    bad_window = dicom_bytes(text={"WindowCenter": "lung", "WindowWidth": "4096"})
    bad_rescale = dicom_bytes(text={"RescaleSlope": "1,5"})
    files = [("text.dcm", text_window), ("bad.dcm", bad_window), ("rescale.dcm", bad_rescale),
             (FILMS[0].name, FILMS[0].read_bytes())]
    resp = httpx.post(f"{server.url}/api/predict", files=[("files", f) for f in files], timeout=60)
    assert resp.status_code == 200
    by_file = {r["file"]: r for r in resp.json()}
    assert "probabilities" in by_file["text.dcm"] and "probabilities" in by_file[FILMS[0].name]
    assert "WindowCenter is 'lung', not a number" in by_file["bad.dcm"]["error"]
    assert "RescaleSlope is '1,5', not a number" in by_file["rescale.dcm"]["error"]
    # The library path (predict command): the same per-film outcome.
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    results = predictor.predict([tmp_path / name for name, _ in files])
    assert [r.ok for r in results] == [True, False, False, True]


def test_responses_carry_no_file_paths(server, tiny_run):
    info = httpx.get(f"{server.url}/api/model")
    text = info.text
    assert str(tiny_run) not in text and "run_dir" not in text
    assert info.json()["backend"] == "keras" and info.json()["export"] is None
    assert str(tiny_run) not in httpx.get(f"{server.url}/openapi.json").text


def test_malformed_and_wrong_type_bodies_are_4xx(server):
    url = f"{server.url}/api/predict"
    assert httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 415
    cut = part_header() + b"partial film"
    resp = httpx.post(url, content=cut, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert resp.status_code == 400 and "malformed" in resp.json()["detail"]
    assert httpx.post(url + "?images=maybe", files={"files": ("a.png", b"x")}).status_code == 400
    assert httpx.post(url, files={"other": ("a.png", b"x")}).json()["detail"].startswith("no films")


def test_schemathesis_all_checks_pass_against_the_live_service(server, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("schemathesis is not installed (pip install 'cxr_tf[test]')")
    config = Path(__file__).with_name("schemathesis.toml")
    run = subprocess.run([str(cli), "--config-file", str(config), "run", f"{server.url}/openapi.json",
                          "--checks", "all", "--max-examples", "25", "--seed", "0",
                          "--no-color"], capture_output=True, text=True, timeout=300, check=False,
                         cwd=tmp_path)  # its .schemathesis/ cache stays out of the repository
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
