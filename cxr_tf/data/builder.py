"""The TFRecord builder: a dataset release (label tables + films) -> ``{split}-{i:05d}-of-{n:05d}.tfrecord``
shards + their manifest. ``python -m cxr_tf.build`` is its command line.

How a build runs:

1. The dataset's adapter (one module of ``cxr_tf.data.datasets`` per release, which also
   declares the release's own options and where its official split is) reads the release's
   tables and matches them with the films on disk; rows without a file, files without a row
   and rows left out on purpose (lateral views) are counted and listed. Missing labels stay
   missing (-1 in the records).
2. Split by patient (``cxr_tf.data.splits``); a patient in two splits stops the build.
3. Plan every shard up front: each split's rows, shuffled with the seed, cut into
   ``ceil(bytes / shard_size_mb)`` contiguous shards (bytes estimated from
   ``image_size``). The plan (every shard's films) is written to
   ``<out>/.build/plan.json`` and followed as stored when the build resumes.
4. Decode, resize and PNG-encode the films in worker processes that import only
   OpenCV and NumPy (spawned, never forked from a process holding TensorFlow);
   the main process serializes the examples (``cxr_tf.data.records``) in plan order and
   writes each shard to ``<name>.tmp``, renaming it when complete.
5. Resume: re-running with the same inputs and settings skips every shard whose
   final file (and its ``.build/<name>.json`` record of what went in) exists; a
   killed build never leaves a partial shard under a final name. Different
   settings or inputs replace the previous build's shards.
6. The manifest (``cxr_tf.data.manifest``): labels, image size, per split examples / patients /
   label counts / shards, seed, split method, the label table's SHA-256, every skipped input
   with its reason, and train-split age mean/std for metadata models.

An unreadable or implausible film (empty, truncated, not an image, too large, too
small, a strip: ``cxr_tf.data.images.FilmLimits``, the rule ``predict`` applies) is
skipped with its reason; it never stops the build. A shard whose films were all
skipped is not written (no zero-byte shards) and is left out of the manifest.
Worker processes watch their parent and exit when it dies, so a killed build
leaves no workers (nor, with them gone, multiprocessing's resource tracker).

Steps 1-3 (``read_release``, ``plan_build``), writing a shard and its record, resuming and the
manifest (``finish_build``) are shared with the Beam builder (``cxr_tf.data.beam_build``,
``python -m cxr_tf.build --runner beam``), which does step 4 on a Beam runner's workers; the
shared pieces are in ``cxr_tf.data.shards``.

What to build is one ``BuildSettings`` (the release, its options, the records' layout), given to
``build_records(settings, out=...)`` or as keywords: ``build_records(out=..., image_size=64)``.
"""

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
import types
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from cxr_tf.data import datasets, shards, splits as splitting
from cxr_tf.data.datasets.base import file_sha256
from cxr_tf.data.images import encode_films, worker_init
from cxr_tf.data.labels import check_findings
from cxr_tf.data.shards import format_summary, plan_shards, write_shard as _write_shard

__all__ = ["BuildSettings", "Plan", "build_records", "default_workers", "finish_build", "format_summary",
           "plan_build", "plan_shards", "read_release"]

_CHUNK = 8  # films per worker task


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What to build (the defaults are the command's, ``python -m cxr_tf.build --help``).

    The release: dataset: its adapter (``cxr_tf.data.datasets.DATASETS``); data_dir: its
    folder, searched recursively for its films (None: the adapter's ``SAMPLE``, a copy shipped
    with cxr_tf); labels: its main label table when it is not where the release puts it;
    official_lists: folder with the official split's list files of a release that has them
    (adapter ``OFFICIAL_LISTS``; default: data_dir); uncertain: uncertain labels ->
    ``ignore`` (missing), ``ones`` or ``zeros``; laterals: keep lateral views (default
    frontal only); options: the release's own options (its adapter's ``OPTIONS``, e.g.
    ``{"aggregate": "any"}`` for VinDr-CXR).

    The records: findings: their label set (release names, in the order given; default every
    finding of the release that ``cxr_tf/resources/findings.csv`` maps); image_size: side of
    the square 8-bit greyscale PNGs written (pixels); split: ``stratified`` or ``official``
    (the release's own split, val carved from train by patient when it has none);
    val_fraction / test_fraction: of patients (official: val of all films); seed: the split
    and the shard order; shard_size_mb: target shard size.
    """

    dataset: str = datasets.DEFAULT
    data_dir: str | Path | None = None
    labels: str | Path | None = None
    official_lists: str | Path | None = None
    uncertain: str = "ignore"
    laterals: bool = False
    options: dict = dataclasses.field(default_factory=dict)
    findings: tuple | None = None
    image_size: int = 256
    split: str = "stratified"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    shard_size_mb: float = 128


def default_workers():
    """Cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _main_module_hidden():
    """Hide ``__main__`` while worker processes start: a spawned child re-imports
    the parent's main script (which may import TensorFlow, or lack a
    ``if __name__ == "__main__"`` guard); the workers need only ``cxr_tf.data.images``."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _worker_pool(workers):
    """``workers`` spawned processes (fork after TensorFlow started its threads can
    deadlock), all started now so that their start-up overlaps with reading the
    table. They import OpenCV and NumPy, never TensorFlow. A worker that dies
    (out of memory) breaks the pool with an error instead of hanging the build."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=worker_init, initargs=(os.getpid(),))
    with _main_module_hidden():
        for _ in range(workers):  # each submit starts one process while none is idle
            pool.submit(int)
    return pool


def _inputs(settings, adapter):
    """(data_dir, labels or None, official_lists) as Paths: the adapter's embedded sample when
    data_dir is None; the lists folder defaults to data_dir. ValueError when ``data_dir`` is not
    the release but looks like another's (the folder is named, and the ``--dataset`` that fits)."""
    data_dir, labels, dataset = settings.data_dir, settings.labels, settings.dataset
    if data_dir is None:
        if adapter.SAMPLE is None:
            raise ValueError(f"--dataset {dataset} needs --data-dir: the folder of the {adapter.TITLE} release")
        data_dir, sample_labels = adapter.SAMPLE
        labels = labels if labels is not None else sample_labels
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist; pass --data-dir with the "
                                f"{adapter.TITLE} release")
    if labels is None and not adapter.looks_like(data_dir):
        others = {name: what for name, what in datasets.recognise(data_dir).items() if name != dataset}
        seen = "; ".join(f"it holds {what}: pass --dataset {name}" for name, what in others.items())
        below = [sub for sub in sorted(data_dir.iterdir()) if sub.is_dir() and adapter.looks_like(sub)]
        if below and not seen:
            seen = f"the release is in {below[0]}: pass --data-dir {below[0]}"
        raise ValueError(f"{data_dir} is not the {adapter.TITLE} release (--dataset {dataset}): "
                         + (seen or f"its files were not found there (docs/datasets/{dataset}.md shows the "
                                    "release's layout)"))
    official_lists = Path(settings.official_lists) if settings.official_lists is not None else data_dir
    return data_dir, (Path(labels) if labels is not None else None), official_lists


@dataclasses.dataclass
class Plan:
    """A build decided once, before any film is read (what both builders follow): the release as
    its adapter read it, the label set, the key identifying the build (``shards.plan_key``), every
    shard with its films (``shards.plan_shards``, or the plan stored by the build being resumed),
    those already complete, and the split's warnings."""

    release: object
    findings: tuple
    data_dir: Path
    key: dict
    shards: list
    done: set
    warnings: list

    @property
    def todo(self):
        """The shards still to write, in plan order."""
        return [s for s in self.shards if s["name"] not in self.done]


def read_release(settings):
    """(release, findings, data_dir, lists_dir) of a build: its settings checked, the release read
    by its adapter. ValueError / FileNotFoundError naming what is wrong."""
    if not 8 <= int(settings.image_size) <= 4096:
        raise ValueError(f"image_size must be 8..4096 pixels, got {settings.image_size}")
    if settings.split not in splitting.METHODS:
        raise ValueError(f"unknown split method {settings.split!r}; choose one of {', '.join(splitting.METHODS)}")
    adapter = datasets.get(settings.dataset)
    data_dir, labels, lists_dir = _inputs(settings, adapter)
    options = datasets.check_options(settings.dataset, settings.options)
    release = adapter.read(data_dir, labels, uncertain=settings.uncertain, laterals=settings.laterals, **options)
    findings = (release.labels if settings.findings is None
                else check_findings(settings.findings, release.labels, f"the {adapter.TITLE} release"))
    if release.table.empty:
        raise FileNotFoundError(
            f"none of the films listed in {release.label_table} was found under {data_dir} "
            f"({len(release.rows_without_files)} row(s) without a file, e.g. {release.rows_without_files[:3]}); "
            f"put the {adapter.TITLE} films there as the release lays them out (or pass --data-dir)")
    if settings.split == "official" and not adapter.OFFICIAL_LISTS and not splitting.has_release_split(release.table):
        raise ValueError(f"the {adapter.TITLE} release has no official split (its tables name no "
                         "train or test films); use --split stratified")
    return release, findings, data_dir, lists_dir


def plan_build(settings, release, findings, data_dir, lists_dir, folder, log):
    """The ``Plan`` of a build into ``folder`` (``shards.LocalFolder`` or ``beam_build.BeamFolder``):
    the split by patient decided once over the whole table, the shards planned (or the stored plan
    of an interrupted build with the same key followed), the folder prepared (``shards.prepare_out``)."""
    matched = release.table
    assignment = splitting.make_split(matched, settings.split, settings.val_fraction, settings.test_fraction,
                                      settings.seed, lists_dir, findings)
    lists_sha = None
    if settings.split == "official" and not splitting.has_release_split(matched):
        lists_sha = {k: file_sha256(p) for k, p in splitting.find_official_lists(lists_dir).items()}
    key = shards.plan_key(settings, release, findings, lists_sha)
    plan = shards.plan_shards(matched, assignment, int(settings.image_size), settings.shard_size_mb, settings.seed)
    planned_shards, done = shards.prepare_out(folder, key, plan, log)
    planned = shards.planned_splits(planned_shards, matched)  # what will be written: checked once more
    splitting.check_no_patient_overlap(matched["patient_id"], planned)
    warnings_ = splitting.missing_label_warnings(matched, planned, labels=findings)
    if done:
        log(f"resuming: {len(done)} of {len(planned_shards)} shards already complete in {folder}")
    return Plan(release, tuple(findings), data_dir, key, planned_shards, done, warnings_)


def finish_build(folder, plan, build, log):
    """Write the lists of rows without files and of excluded films, and the manifest (``build``:
    how the build ran, the manifest's ``build``), into ``folder``; returns the ``Manifest``."""
    release = plan.release
    folder.write_text("rows_without_files.txt", "".join(f"{n}\n" for n in release.rows_without_files))
    excluded = [f"{name}\t{reason}\n" for reason, names in release.excluded.items() for name in names]
    if excluded:
        folder.write_text("excluded.txt", "".join(excluded))
    records = shards.make_manifest(folder, plan.shards, release, plan.key, plan.data_dir, plan.warnings,
                                   plan.findings, build)
    folder.write_json(shards.MANIFEST, records.to_json())
    log(format_summary(records, folder))
    return records


def _encoded(jobs, image_size, workers, pool):
    """(png or None, reason or None) for each path of ``jobs``, in order; at most a
    few chunks per worker in flight, so memory stays bounded on 112k films."""
    if pool is None:
        for start in range(0, len(jobs), _CHUNK):
            yield from encode_films(jobs[start:start + _CHUNK], image_size)
        return
    pending = deque()
    chunks = (jobs[start:start + _CHUNK] for start in range(0, len(jobs), _CHUNK))
    for chunk in chunks:
        pending.append(pool.submit(encode_films, chunk, image_size))
        if len(pending) >= 4 * workers:
            yield from _result(pending.popleft())
    while pending:
        yield from _result(pending.popleft())


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise RuntimeError("a decoding worker process died (out of memory?); the shards completed so far "
                           "are kept: run the same build again to resume") from None


def _write_shards(folder, todo, table, findings, image_size, workers, pool, progress):
    """Encode and write the shards in ``todo``; returns the number of films encoded."""
    from tqdm import tqdm  # noqa: PLC0415

    rows = shards.example_fields(table, findings)
    jobs = [rows[name][0] for shard in todo for name in shard["images"]]
    results = _encoded(jobs, image_size, workers, pool)
    bar = tqdm(total=len(jobs), unit="img", desc="encoding", disable=not progress, dynamic_ncols=True)
    try:
        for shard in todo:
            _write_shard(folder, shard, rows, results, bar)
    finally:
        bar.close()
    return len(jobs)


def build_records(settings=None, out="records", workers=None, progress=True, log=print, **fields):
    """Build TFRecord shards and their manifest into ``out``; returns the records' ``Manifest``.

    settings: what to build (``BuildSettings``; default: the default dataset's sample, 256 px);
    ``fields``: ``BuildSettings`` fields given as keywords instead, or over ``settings``
    (``build_records(data_dir="/data/release", image_size=64)``). workers: decoding processes
    (default: all cores; 0 or 1 decodes in this process); progress: a progress bar; log: where
    the closing summary goes. Re-running with the same settings resumes an interrupted build.
    """
    started = time.perf_counter()
    settings = dataclasses.replace(settings or BuildSettings(), **fields)
    workers = default_workers() if workers is None else int(workers)
    release, findings, data_dir, lists_dir = read_release(settings)
    folder = shards.LocalFolder(out)
    folder.make()
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        plan = plan_build(settings, release, findings, data_dir, lists_dir, folder, log)
        encode_start = time.perf_counter()
        encoded = (_write_shards(folder, plan.todo, release.table, plan.findings, int(settings.image_size), workers,
                                 pool, progress) if plan.todo else 0)
        encode_seconds = time.perf_counter() - encode_start
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    build = {"seconds": round(time.perf_counter() - started, 3), "encoded": encoded,
             "resumed_shards": len(plan.done),
             "images_per_s": round(encoded / encode_seconds, 2) if encoded else None, "workers": workers}
    return finish_build(folder, plan, build, log)
