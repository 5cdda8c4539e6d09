"""``python -m cxr_tf.serve`` as a real process on loopback (issue 28): a body that stalls or
trickles is closed with 408 within --body-timeout, a client that hangs up is one log line and
no traceback, and X-Forwarded-For is believed only from a --proxy. One server process
(about 10 s to start) serves all of them; its stderr is the log that is checked."""

import os
import select
import socket
import subprocess
import sys
import time

import httpx
import pytest

from cxr_tf.testing import free_port

BOUNDARY = "cxrboundary7d3a"
PROXY = "127.0.0.2"  # a loopback address the client can send from: the trusted proxy
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(url, path of the server's stderr) of ``python -m cxr_tf.serve`` with a 1 s body timeout."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "cxr_tf.serve", "--model", str(tiny_run), "--port",
                                    str(port), "--samples", "2", "--no-gate", "--body-timeout", str(TIMEOUT_S),
                                    "--proxy", PROXY],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/api/health", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
    yield url, log
    process.terminate()
    process.wait(30)


def upload_begun(url, source="127.0.0.1", forwarded_for=None):
    """A socket (from ``source``) whose POST /api/predict has sent its headers and the first
    part's headers, 10,000 body bytes promised."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    sock.sendall((f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 10000\r\n\r\n"
                  f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n")
                 .encode())
    return sock


def status_within(sock, seconds, trickle=False):
    """(status code, seconds waited) of the answer on ``sock``; with ``trickle`` one byte of
    body goes out every 0.25 s meanwhile (never a pause as long as the timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            head = sock.recv(65536)
            return int(head.split(b" ", 2)[1]), time.monotonic() - start
        if trickle:
            sock.sendall(b"x")
    return None, seconds


def log_lines(log, text, wait=5.0):
    """The server's stderr lines containing ``text`` (waiting up to ``wait`` s for one)."""
    deadline = time.monotonic() + wait
    while True:
        lines = [line for line in log.read_text().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_stalled_and_trickling_bodies_get_408_within_the_timeout(served):
    url, log = served
    stalled = upload_begun(url)
    status, waited = status_within(stalled, 10 * TIMEOUT_S)
    assert status == 408 and TIMEOUT_S * 0.9 <= waited < 5 * TIMEOUT_S, (status, waited)
    # one byte every 0.25 s: never silent for the timeout, but far under the minimum rate (begun only
    # now: begun beside the stalled one, it sat silent for the timeout and got its 408 for that)
    trickling = upload_begun(url)
    status, waited = status_within(trickling, 10 * TIMEOUT_S, trickle=True)
    assert status == 408 and waited < 5 * TIMEOUT_S, (status, waited)
    stalled.close(), trickling.close()
    assert len(log_lines(log, "408 to")) >= 2
    assert httpx.get(f"{url}/api/health").status_code == 200


def test_a_client_that_hangs_up_is_one_log_line_and_no_traceback(served):
    url, log = served
    sock = upload_begun(url)
    sock.sendall(b"\x89PNG half a film")
    time.sleep(0.2)
    sock.close()
    lines = log_lines(log, "hung up")
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines
    assert "Traceback" not in log.read_text() and "Exception in ASGI application" not in log.read_text()


def test_forwarded_for_is_believed_only_from_the_proxy(served):
    url, log = served
    from_proxy = upload_begun(url, source=PROXY, forwarded_for="203.0.113.7")
    from_client = upload_begun(url, forwarded_for="203.0.113.8")  # 127.0.0.1 is not a --proxy
    assert status_within(from_proxy, 10 * TIMEOUT_S)[0] == 408
    assert status_within(from_client, 10 * TIMEOUT_S)[0] == 408
    from_proxy.close(), from_client.close()
    assert log_lines(log, "408 to 203.0.113.7:")
    assert not log_lines(log, "203.0.113.8", wait=0), "a forwarded address from a client that is not a proxy"

