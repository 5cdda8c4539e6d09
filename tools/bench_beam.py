"""Benchmark the Beam paths against the local ones, in one run, on the same films and the same number
of worker processes:

- build: the local builder (``cxr_tf.data.builder``, ``--workers W`` processes) against the Beam
  build (``cxr_tf.data.beam_build``) on Beam's direct runner with ``W`` worker processes
  (``direct_running_mode=multi_processing``), at two film counts: the difference between them
  gives the marginal cost of a film (start-up paid once taken out), hence Beam's per-film overhead;
- scoring: ``Predictor.predict`` (what ``python -m cxr_tf.predict`` runs, one process) against
  ``cxr_tf.inference.scoring.score`` in this process (one worker) and with ``W`` worker processes.

Films: the 7 real full-size NIH films of tests/fixtures/nih-sample (1,024 px PNG; or ``--data-dir``
with ``--labels``), each seen ``--small`` and ``--large`` times under new names and patients
(``repeated``); the build runs on both counts, scoring on the small one. Model: ``--model RUN``, else an untrained
``simple_cnn`` at 128 px (the cost of the model is not what is measured here). The cluster line is a
projection (films/s per worker from the marginal rate, times workers), not a measurement.

    python tools/bench_beam.py [--workers 2] [--small 10] [--large 40] [--model RUN]

The machines here are shared: run it on a quiet machine, or read the figures as noisy.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_build import repeated_data_dir  # noqa: E402  (tools/, beside this script)

QUIET = dict(log=lambda *_: None)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def builds(data_dir, labels, out, image_size, workers, options):
    """(local seconds, Beam seconds, films) of one build of the release in ``data_dir``."""
    from cxr_tf.data import beam_build, builder  # noqa: PLC0415

    settings = builder_settings(data_dir, labels, image_size)
    local, local_s = timed(builder.build_records, settings, out=out / "local", workers=workers, progress=False,
                           **QUIET)
    _, beam_s = timed(beam_build.build_records, settings, out=out / "beam", options=options, **QUIET)
    return local_s, beam_s, sum(s.count for s in local.splits.values())


def builder_settings(data_dir, labels, image_size):
    from cxr_tf.data.builder import BuildSettings  # noqa: PLC0415

    return BuildSettings(data_dir=data_dir, labels=labels, image_size=image_size)


def untrained_run(folder):
    from conftest import write_run_dir  # noqa: PLC0415 (tests/conftest.py: the run layout the Predictor reads)

    from cxr_tf.models import build_model  # noqa: PLC0415

    return write_run_dir(folder, build_model("simple_cnn", image_size=128, weights=None, dropout=0.5),
                         "simple_cnn", 128)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Beam build and scoring against the local builder and predict.")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "tests" / "fixtures" / "nih-sample",
                        help="real NIH films (default: the 7 full-size test films)")
    parser.add_argument("--labels", type=Path, help="their label table (default: the fixture's)")
    parser.add_argument("--small", type=int, default=10, help="copies of each film in the small build (default 10)")
    parser.add_argument("--large", type=int, default=40, help="copies of each film in the large build (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every contender (default 2)")
    parser.add_argument("--image-size", type=int, default=256, help="records' film side, px (default 256)")
    parser.add_argument("--model", help="run folder to score with (default: an untrained simple_cnn at 128 px)")
    parser.add_argument("--samples", type=int, default=25, help="Monte-Carlo passes per film (default 25)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))

    import tensorflow as tf  # noqa: F401, PLC0415 (loaded before any timing)
    from cxr_tf.data import beam_build  # noqa: PLC0415
    from cxr_tf.data.datasets import nih  # noqa: PLC0415
    from cxr_tf.inference import scoring  # noqa: PLC0415
    from cxr_tf.inference.predictor import Predictor  # noqa: PLC0415

    labels = args.labels or args.data_dir / "Data_Entry_sample.csv"
    table = nih.match_files(nih.read_label_table(labels), args.data_dir).table
    workers = args.workers
    multi = beam_build.pipeline_options("beam", workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = (args.small, args.large)
        rows = []
        for repeat in counts:
            films = tmp / f"films{repeat}"
            labels = repeated_data_dir(table, repeat, films)
            for path in films.rglob("*.png"):
                path.read_bytes()  # page cache warm for both builders
            rows.append(builds(films, labels, tmp / f"records{repeat}", args.image_size, workers, multi))
        print(f"build, {args.image_size} px, {workers} worker processes each (local pool | Beam FnApiRunner "
              "multi_processing):")
        for local_s, beam_s, n in rows:
            print(f"  {n:5d} films: local {n / local_s:7.1f} films/s ({local_s:6.2f} s)   Beam {n / beam_s:7.1f} "
                  f"films/s ({beam_s:6.2f} s)   beam_vs_local={local_s / beam_s:.2f}")
        (l1, b1, n1), (l2, b2, n2) = rows[0], rows[-1]
        if n2 > n1:
            local_film, beam_film = (l2 - l1) / (n2 - n1), (b2 - b1) / (n2 - n1)
            print(f"  marginal cost per film: local {1e3 * local_film:.1f} ms, Beam {1e3 * beam_film:.1f} ms "
                  f"(wall, {workers} processes): Beam's per-film overhead {1e3 * (beam_film - local_film):+.1f} ms; "
                  f"its fixed start-up {b1 - n1 * beam_film:.1f} s vs local {l1 - n1 * local_film:.1f} s")
            per_worker = 1 / (beam_film * workers) if beam_film > 0 else float("nan")
            print(f"  PROJECTION (not measured): {per_worker:.1f} films/s per worker at {args.image_size} px on these "
                  f"films; x 100 workers = {100 * per_worker:.0f} films/s (900,000 films in "
                  f"{900_000 / (100 * per_worker) / 60:.0f} min), if reading the bucket keeps up")
        _, inprocess_s = timed(beam_build.build_records, builder_settings(films, labels, args.image_size),
                               out=tmp / "inprocess", **QUIET)
        print(f"  Beam in this process (FnApiRunner, one worker, no worker start-up): {n2 / inprocess_s:7.1f} films/s "
              f"({inprocess_s:6.2f} s for {n2} films)")

        model = args.model or untrained_run(tmp / "run")
        paths = sorted(str(p) for p in (tmp / f"films{args.small}").rglob("*.png"))
        predictor = Predictor(model, samples=args.samples)
        predictor.predict(paths[:2])  # the model traced once, as a command's first batch does
        _, predict_s = timed(predictor.predict, paths)
        options = {"samples": args.samples}
        one = timed(scoring.score, model, paths, tmp / "scores1", options, **QUIET)
        many = timed(scoring.score, model, paths, tmp / "scores", options, options=multi, **QUIET)
    n = len(paths)
    print(f"scoring, {n} films, {args.samples} MC samples:")
    print(f"  predict (Predictor.predict, one process, model loaded): {n / predict_s:7.1f} films/s ({predict_s:6.2f} s)")
    for label, ((summary, seconds)) in (("score, 1 worker in process", one), (f"score, {workers} processes", many)):
        print(f"  {label:<27} (model load included): {n / seconds:7.1f} films/s ({seconds:6.2f} s)  "
              f"score_vs_predict={predict_s / seconds:.2f}  [{summary['processed']} processed, "
              f"{summary['not_processed']} not]")


if __name__ == "__main__":
    main()
