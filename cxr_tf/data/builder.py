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

What to build is one ``BuildSettings`` (the release, its options, the records' layout), given to
``build_records(settings, out=...)`` or as keywords: ``build_records(out=..., image_size=64)``.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import types
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from cxr_tf.data import datasets, harmonise, manifest, splits as splitting
from cxr_tf.data.datasets.base import MISSING, file_sha256, patient_number
from cxr_tf.data.images import encode_films, worker_init
from cxr_tf.data.jsonfile import write_json
from cxr_tf.data.labels import check_findings
from cxr_tf.data.manifest import Manifest, Split

PLAN_DIR = ".build"
PLAN_VERSION = 1
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


def _estimated_example_bytes(image_size):
    # PNG (images.encode_png) of a downsized chest film: 0.42 (512 px) to 0.68 (64 px) bytes/pixel,
    # 0.48 at 224-256 px; plus the other features.
    return 0.48 * image_size * image_size + 400


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


def plan_shards(table, splits, image_size, shard_size_mb, seed):
    """[{"name", "split", "images": [image_index, ...]}, ...] in writing order.

    Each split's rows are shuffled with ``seed`` (so shards mix patients and
    findings) and cut into near-equal contiguous shards of about shard_size_mb."""
    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be positive, got {shard_size_mb}")
    from cxr_tf.data.records import shard_name  # noqa: PLC0415 (importing cxr_tf.data.builder stays TensorFlow-free)

    rng = np.random.default_rng(seed)
    shards = []
    for split in splitting.SPLITS:
        names = table["image_index"][(splits == split).to_numpy()].to_numpy()
        if not len(names):
            continue
        names = names[rng.permutation(len(names))]
        total = len(names) * _estimated_example_bytes(image_size)
        count = max(1, min(len(names), math.ceil(total / (shard_size_mb * 2**20))))
        for i, part in enumerate(np.array_split(names, count)):
            shards.append({"name": shard_name(split, i, count), "split": split, "images": part.tolist()})
    return shards


def _plan_key(settings, release, findings, lists_sha):
    """What identifies a build: the same key resumes it, another replaces its shards."""
    files_sha = hashlib.sha256("\n".join(sorted(release.table["image_index"])).encode()).hexdigest()
    stratified = settings.split == "stratified"
    key = {"version": PLAN_VERSION, "label_table_sha256": file_sha256(release.label_table),
           "files_sha256": files_sha, "image_size": int(settings.image_size), "split_method": settings.split,
           "val_fraction": float(settings.val_fraction),
           "test_fraction": float(settings.test_fraction) if stratified else 0.0, "seed": int(settings.seed),
           "shard_size_mb": float(settings.shard_size_mb), "official_lists_sha256": lists_sha}
    # A release without options, built with all its findings, keeps the key of the builds made
    # before releases had options and label subsets existed (so that those builds resume).
    if release.options or tuple(findings) != tuple(release.labels):
        key["findings"] = list(findings)
    if release.options:
        key.update(dataset=release.dataset, options=release.options)
    return key


def _planned_splits(shards, table):
    """Split name per row of ``table`` as the plan assigns it (rows outside it: None)."""
    split_of = {name: shard["split"] for shard in shards for name in shard["images"]}
    return table["image_index"].map(split_of).astype(object)


def _prepare_out(out, key, shards, log):
    """(shards, done): the plan to follow and the names of its shards already
    complete. A plan stored by an earlier run with the same key is followed as
    stored; one with another key has its shards removed and is replaced."""
    state = out / PLAN_DIR
    state.mkdir(parents=True, exist_ok=True)
    plan_path = state / "plan.json"
    old = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    if old is not None and old.get("key") != key:
        log(f"{out}: inputs or settings changed since the last build there; replacing its shards")
        for shard in old.get("shards", []):
            for stale in (out / shard["name"], state / f"{shard['name']}.json"):
                stale.unlink(missing_ok=True)
        manifest.remove(out)
        old = None
    if old is not None:
        shards = old["shards"]
    planned = {s["name"] for s in shards}
    strangers = sorted(p.name for p in out.glob("*.tfrecord") if p.name not in planned)
    if strangers:
        raise FileExistsError(f"{out} holds shards this build did not plan ({strangers[:3]}...); "
                              f"remove them or choose another --out")
    if old is None:
        write_json(plan_path, {"key": key, "shards": shards})
    for leftover in out.glob("*.tmp"):
        leftover.unlink()  # partial shard of a killed build
    done = {s["name"] for s in shards if (state / f"{s['name']}.json").is_file()
            and ((out / s["name"]).is_file() or not _record(out, s["name"])["images"])}
    return shards, done


def _record(out, name):
    """What went into shard ``name`` ({"images", "skipped", ...}), from ``.build/<name>.json``."""
    return json.loads((out / PLAN_DIR / f"{name}.json").read_text())


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


def _write_shards(out, todo, table, findings, image_size, workers, pool, progress):
    """Encode and write the shards in ``todo``; returns the number of films encoded."""
    from tqdm import tqdm  # noqa: PLC0415

    # missing labels (NaN) and unknown ages are stored as -1 (cxr_tf.data.records)
    labels = np.nan_to_num(table[list(findings)].to_numpy(np.float64), nan=MISSING).astype(np.int64)
    fields = zip(table["path"].astype(str), labels, table["patient_id"].map(patient_number),
                 np.nan_to_num(table["age"].to_numpy(np.float64), nan=MISSING).astype(np.int64),
                 table["sex"], table["view"], table["follow_up"])
    rows = dict(zip(table["image_index"], fields))
    jobs = [rows[name][0] for shard in todo for name in shard["images"]]
    results = _encoded(jobs, image_size, workers, pool)
    bar = tqdm(total=len(jobs), unit="img", desc="encoding", disable=not progress, dynamic_ncols=True)
    try:
        for shard in todo:
            _write_shard(out, shard, rows, results, bar)
    finally:
        bar.close()
    return len(jobs)


def _write_shard(out, shard, rows, results, bar):
    """Write one shard: its films' examples to ``<name>.tmp``, what went in to
    ``.build/<name>.json``, then the rename to its final name (none when every film was skipped)."""
    import tensorflow as tf  # noqa: PLC0415 (only the writing process needs it)

    from cxr_tf.data.records import serialize_example  # noqa: PLC0415

    final = out / shard["name"]
    tmp = final.with_name(final.name + ".tmp")
    written, skipped = [], []
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for name in shard["images"]:
            png, reason = next(results)
            bar.update(1)
            path, labels, patient, age, sex, view, follow_up = rows[name]
            if png is None:
                skipped.append({"file": path, "reason": reason})
                continue
            writer.write(serialize_example(png, labels, name, int(patient), int(age), str(sex), str(view),
                                           int(follow_up)))
            written.append(name)
    write_json(out / PLAN_DIR / f"{shard['name']}.json",
               {"shard": shard["name"], "split": shard["split"], "images": written, "skipped": skipped})
    if written:
        os.replace(tmp, final)
    else:  # every film of the shard skipped: no zero-byte shard (training refuses those)
        tmp.unlink()


def _manifest(out, shards, release, key, data_dir, warnings_, labels, build):
    """The records' ``Manifest``, from what the shards' ``.build`` records say went in."""
    records = {s["name"]: _record(out, s["name"]) for s in shards}
    rows = release.table.set_index("image_index")
    summary = {}
    for split in splitting.SPLITS:
        names = [n for s in shards if s["split"] == split for n in records[s["name"]]["images"]]
        counts = splitting.summarise(rows.loc[names], labels)
        summary[split] = Split(count=counts["num_examples"], patients=counts["num_patients"],
                               label_counts=counts["label_counts"], label_known=counts["label_known"],
                               shards=tuple(s["name"] for s in shards
                                            if s["split"] == split and records[s["name"]]["images"]))
    train_ages = rows.loc[[n for s in shards if s["split"] == "train" for n in records[s["name"]]["images"]], "age"]
    train_ages = train_ages.dropna()
    skipped = [item for s in shards for item in records[s["name"]]["skipped"]]
    skipped += [{"file": str(path), "reason": "no row in the label table"} for path in release.files_without_rows]
    skipped += [{"file": str(ignored), "reason": f"duplicate file name; used {used}"}
                for ignored, used in release.duplicates]
    return Manifest(
        dataset=release.dataset, labels=tuple(labels), harmonised=harmonise.mapping(release.dataset, labels),
        options=release.options, image_size=key["image_size"], splits=summary,
        seed=key["seed"], split_method=key["split_method"],
        val_fraction=key["val_fraction"], test_fraction=key["test_fraction"],
        label_table=str(release.label_table), label_table_sha256=key["label_table_sha256"],
        data_dir=str(data_dir),
        skipped=skipped,
        rows_without_files={"count": len(release.rows_without_files),
                            "list": "rows_without_files.txt" if release.rows_without_files else None,
                            "first": release.rows_without_files[:10]},
        excluded={reason: {"count": len(names), "first": names[:10]} for reason, names in release.excluded.items()},
        # standardising constants for metadata models; std 1 when undefined or zero
        age_mean=float(train_ages.mean()) if len(train_ages) else 0.0,
        age_std=float(train_ages.std(ddof=0)) if len(train_ages) > 1 and train_ages.std() > 0 else 1.0,
        warnings=warnings_, build=build)


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
    if not 8 <= int(settings.image_size) <= 4096:
        raise ValueError(f"image_size must be 8..4096 pixels, got {settings.image_size}")
    if settings.split not in splitting.METHODS:
        raise ValueError(f"unknown split method {settings.split!r}; choose one of {', '.join(splitting.METHODS)}")
    workers = default_workers() if workers is None else int(workers)
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
    official = settings.split == "official"
    if official and not adapter.OFFICIAL_LISTS and not splitting.has_release_split(release.table):
        raise ValueError(f"the {adapter.TITLE} release has no official split (its tables name no "
                         "train or test films); use --split stratified")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image_size = int(settings.image_size)
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        matched = release.table
        assignment = splitting.make_split(matched, settings.split, settings.val_fraction, settings.test_fraction,
                                          settings.seed, lists_dir, findings)
        lists_sha = None
        if official and not splitting.has_release_split(matched):
            lists_sha = {k: file_sha256(p) for k, p in splitting.find_official_lists(lists_dir).items()}
        key = _plan_key(settings, release, findings, lists_sha)
        plan = plan_shards(matched, assignment, image_size, settings.shard_size_mb, settings.seed)
        shards, done = _prepare_out(out, key, plan, log)
        planned = _planned_splits(shards, matched)  # what will be written: checked once more
        splitting.check_no_patient_overlap(matched["patient_id"], planned)
        warnings_ = splitting.missing_label_warnings(matched, planned, labels=findings)
        todo = [s for s in shards if s["name"] not in done]
        if done:
            log(f"resuming: {len(done)} of {len(shards)} shards already complete in {out}")
        encode_start = time.perf_counter()
        encoded = _write_shards(out, todo, matched, findings, image_size, workers, pool, progress) if todo else 0
        encode_seconds = time.perf_counter() - encode_start
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    (out / "rows_without_files.txt").write_text("".join(f"{n}\n" for n in release.rows_without_files))
    excluded = [f"{name}\t{reason}\n" for reason, names in release.excluded.items() for name in names]
    if excluded:
        (out / "excluded.txt").write_text("".join(excluded))
    build = {"seconds": round(time.perf_counter() - started, 3), "encoded": encoded, "resumed_shards": len(done),
             "images_per_s": round(encoded / encode_seconds, 2) if encoded else None, "workers": workers}
    records = _manifest(out, shards, release, key, data_dir, warnings_, findings, build)
    manifest.write(out, records)
    log(format_summary(records, out))
    return records


def format_summary(records, out):
    """The closing summary of a build (``records``: its ``Manifest``), as text."""
    lines = [f"records in {out} ({records.image_size} px, split {records.split_method}, seed {records.seed}):"]
    for name, split in records.splits.items():
        lines.append(f"  {name:5s} {split.count:7d} films  {split.patients:6d} patients  {len(split.shards):4d} shards")
    build = records.build or {}
    rate = f"{build['images_per_s']:.1f} images/s" if build.get("images_per_s") else "nothing to encode"
    lines.append(f"  skipped {len(records.skipped)} input file(s); "
                 f"{(records.rows_without_files or {}).get('count', 0)} table row(s) without a file")
    for reason, excluded in records.excluded.items():
        lines.append(f"  excluded {excluded['count']} film(s): {reason} (listed in excluded.txt)")
    lines.append(f"  {build.get('encoded', 0)} films encoded in {build.get('seconds', 0):.1f} s ({rate}, "
                 f"{build.get('workers')} workers); {build.get('resumed_shards', 0)} shards kept from before")
    for warning in records.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
