"""Bounded load test of the triage service on loopback.

    python tools/bench_serve.py --model RUN_DIR --film FILM.png [--requests 200 --concurrency 8]
    python tools/bench_serve.py --url http://127.0.0.1:8000 --film FILM.png
    python tools/bench_serve.py --url URL [--baseline-url URL2] --film FILM.png --slow-clients 8 --requests 20

Starts the service in this process on a free loopback port (unless --url is given),
measures GET /api/health idle, then sends ``--requests`` POST /api/predict uploads of
the film, ``--concurrency`` at a time, while one client polls /api/health, and prints
films/s and p50/p95/max latency of predict and of health (idle and under load) side by
side, with the error count. Last line:
``p50_ms=<x> p95_ms=<y> errors=<n> health_idle_p95_ms=<a> health_p95_ms=<b>``.
A 503 (queue full) counts as an error: size ``--concurrency`` to the service's ``--max-queue``.

With ``--slow-clients N`` it measures instead what slow uploaders cost a normal client
(issue 28): one client sends ``--requests`` uploads one after the other, first alone, then
while N clients upload 1 byte per second (raw sockets, headers sent, the body trickling),
and prints the normal client's 200s, 503s, other answers and p50/p95 latency for 0 and N
slow clients; with ``--baseline-url`` (the same command of another version, e.g. ``main``)
both servers side by side. Last line: ``slow_clients=<N> errors_503=<n> p50_ms=<x>`` for --url.
"""


import argparse
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np


def load_test(url, film, requests=200, concurrency=8, samples_param=""):
    """Latencies in ms (list) and the error count of ``requests`` uploads of ``film``."""
    data = Path(film).read_bytes()

    def one(_):
        start = time.perf_counter()
        try:
            resp = httpx.post(f"{url}/api/predict{samples_param}", files={"files": (Path(film).name, data)}, timeout=120)
            ok = resp.status_code == 200 and "error" not in resp.json()[0]
        except httpx.HTTPError:
            ok = False
        return (time.perf_counter() - start) * 1000, ok

    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    return [ms for ms, _ in outcomes], sum(not ok for _, ok in outcomes)


def health_latencies(url, stop=None, count=200, pause_s=0.02):
    """Latencies in ms of GET /api/health, one at a time, until ``stop`` is set (or ``count`` done)."""
    out = []
    with httpx.Client(timeout=60) as client:
        while (stop is None and len(out) < count) or (stop is not None and not stop.is_set()):
            start = time.perf_counter()
            client.get(f"{url}/api/health").raise_for_status()
            out.append((time.perf_counter() - start) * 1000)
            time.sleep(pause_s)
    return out


def _slow_upload(url):
    """A socket whose POST /api/predict has sent its headers and the first part's headers,
    1 MB of body promised: an upload that has begun."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    boundary = "benchslowclient"
    sock.sendall((f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {1 << 20}\r\n\r\n"
                  f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"slow.png\"\r\n\r\n")
                 .encode())
    return sock


def with_slow_clients(url, film, slow, requests):
    """{status code: count} and latencies (ms) of the 200s of ``requests`` uploads of ``film``,
    one after the other, while ``slow`` clients upload 1 byte per second."""
    sockets = [_slow_upload(url) for _ in range(slow)]
    stop = threading.Event()

    def trickle():
        while not stop.wait(1.0):
            for sock in sockets:
                try:
                    sock.sendall(b"x")
                except OSError:  # answered (408) and closed by the server: that client is done
                    pass

    trickler = threading.Thread(target=trickle)
    trickler.start()
    statuses, latencies = {}, []
    data = Path(film).read_bytes()
    try:
        time.sleep(1.5 if slow else 0)  # every slow upload has begun and sent a byte
        with httpx.Client(timeout=120) as client:
            for _ in range(requests):
                start = time.perf_counter()
                status = client.post(f"{url}/api/predict", files={"files": (Path(film).name, data)}).status_code
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
    finally:
        stop.set()
        trickler.join()
        for sock in sockets:
            sock.close()
    return statuses, latencies


def slow_client_table(urls, film, slow, requests):
    """Print the normal client's answers with 0 and ``slow`` slow clients for each of ``urls``
    {label: url}; the (503 count, p50 ms) of the first url's run with ``slow`` slow clients."""
    print(f"a normal client's {requests} uploads, one after the other, with 0 and {slow} clients "
          "uploading 1 byte/s:")
    print(f"  {'server':10s} {'slow':>4s} {'200':>5s} {'503':>5s} {'other':>5s} {'p50 ms':>8s} {'p95 ms':>8s}")
    first = None
    for label, url in urls.items():
        with_slow_clients(url, film, 0, 3)  # warm-up: the first predictions trace the model
        for n in (0, slow):
            statuses, latencies = with_slow_clients(url, film, n, requests)
            p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"), float("nan"))
            other = requests - statuses.get(200, 0) - statuses.get(503, 0)
            print(f"  {label:10s} {n:4d} {statuses.get(200, 0):5d} {statuses.get(503, 0):5d} {other:5d} "
                  f"{p50:8.1f} {p95:8.1f}")
            if first is None and n == slow:
                first = statuses.get(503, 0), p50
    return first


def _row(name, latencies):
    p50, p95 = np.percentile(latencies, [50, 95])
    return f"  {name:22s} n={len(latencies):5d}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  max {max(latencies):7.1f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", required=True, help="film to upload (PNG, JPEG or DICOM)")
    parser.add_argument("--model", help="run folder to serve in-process")
    parser.add_argument("--url", help="an already running service instead of --model")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=25, help="MC dropout passes (with --model)")
    parser.add_argument("--images", action="store_true", help="ask for ?images=1 (film + Grad-CAM overlays)")
    parser.add_argument("--slow-clients", type=int, default=0, metavar="N",
                        help="measure a normal client with 0 and N clients uploading 1 byte/s instead")
    parser.add_argument("--baseline-url", help="with --slow-clients: another running service to compare")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.url):
        parser.error("give exactly one of --model RUN_DIR or --url URL")

    server = None
    url = args.url
    if args.model:
        from cxr_tf.inference.predictor import Predictor
        from cxr_tf.inference.service import DEFAULT_MAX_QUEUE, create_app
        from cxr_tf.testing import LiveServer

        server = LiveServer(create_app(Predictor(args.model, samples=args.samples),
                                       max_queue=max(args.concurrency, DEFAULT_MAX_QUEUE))).start()
        url = server.url
    try:
        if args.slow_clients:
            urls = {"this": url, **({"baseline": args.baseline_url} if args.baseline_url else {})}
            errors, p50 = slow_client_table(urls, args.film, args.slow_clients, args.requests)
            print(f"slow_clients={args.slow_clients} errors_503={errors} p50_ms={p50:.0f}")
            return 1 if errors else 0
        query = "?images=1" if args.images else ""
        one_warmup = load_test(url, args.film, requests=2, concurrency=1, samples_param=query)
        if one_warmup[1]:
            sys.exit(f"warm-up request to {url} failed: is the film readable and the service up?")
        idle = health_latencies(url, count=100)
        stop = threading.Event()
        under_load = []
        poller = threading.Thread(target=lambda: under_load.extend(health_latencies(url, stop)))
        start = time.perf_counter()
        poller.start()
        latencies, errors = load_test(url, args.film, args.requests, args.concurrency, query)
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
    finally:
        if server:
            server.stop()
    p50, p95 = np.percentile(latencies, [50, 95])
    idle_p95, load_p95 = np.percentile(idle, 95), np.percentile(under_load, 95)
    print(f"{args.requests} requests, {args.concurrency} at a time, in {wall:.1f} s: "
          f"{args.requests / wall:.2f} films/s, {errors} errors")
    print(_row("predict", latencies))
    print(_row("health idle", idle))
    print(_row("health under load", under_load))
    print(f"  health p95 under load / idle: x{load_p95 / idle_p95:.1f}")
    print(f"p50_ms={p50:.0f} p95_ms={p95:.0f} errors={errors} health_idle_p95_ms={idle_p95:.1f} "
          f"health_p95_ms={load_p95:.1f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
