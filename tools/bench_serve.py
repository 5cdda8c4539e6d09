"""Bounded load test of the triage service on loopback.

    python tools/bench_serve.py --model RUN_DIR --film FILM.png [--requests 200 --concurrency 8]
    python tools/bench_serve.py --url http://127.0.0.1:8000 --film FILM.png

Starts the service in this process on a free loopback port (unless --url is given),
sends ``--requests`` POST /api/predict uploads of the film, ``--concurrency`` at a
time, and prints p50/p95/max latency, throughput and the error count. Last line:
``p50_ms=<x> p95_ms=<y> errors=<n>``.
"""

import argparse
import sys
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--film", required=True, help="film to upload (PNG, JPEG or DICOM)")
    parser.add_argument("--model", help="run folder to serve in-process")
    parser.add_argument("--url", help="an already running service instead of --model")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=25, help="MC dropout passes (with --model)")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.url):
        parser.error("give exactly one of --model RUN_DIR or --url URL")

    server = None
    url = args.url
    if args.model:
        from cxr_tf.inference.predictor import Predictor
        from cxr_tf.inference.service import create_app
        from cxr_tf.testing import LiveServer

        server = LiveServer(create_app(Predictor(args.model, samples=args.samples))).start()
        url = server.url
    try:
        one_warmup = load_test(url, args.film, requests=2, concurrency=1)
        if one_warmup[1]:
            sys.exit(f"warm-up request to {url} failed: is the film readable and the service up?")
        start = time.perf_counter()
        latencies, errors = load_test(url, args.film, args.requests, args.concurrency)
        wall = time.perf_counter() - start
    finally:
        if server:
            server.stop()
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"{args.requests} requests, {args.concurrency} at a time, in {wall:.1f} s: "
          f"{args.requests / wall:.1f} films/s; latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(latencies):.0f} ms")
    print(f"p50_ms={p50:.0f} p95_ms={p95:.0f} errors={errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
