"""Bounded load test of the triage service on loopback.

    python tools/bench_serve.py --model RUN_DIR --film FILM.png [--requests 200 --concurrency 8]
    python tools/bench_serve.py --url http://127.0.0.1:8000 --film FILM.png

Starts the service in this process on a free loopback port (unless --url is given),
measures GET /api/health idle, then sends ``--requests`` POST /api/predict uploads of
the film, ``--concurrency`` at a time, while one client polls /api/health, and prints
films/s and p50/p95/max latency of predict and of health (idle and under load) side by
side, with the error count. Last line:
``p50_ms=<x> p95_ms=<y> errors=<n> health_idle_p95_ms=<a> health_p95_ms=<b>``.
A 503 (queue full) counts as an error: size ``--concurrency`` to the service's ``--max-queue``.
"""

import argparse
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
