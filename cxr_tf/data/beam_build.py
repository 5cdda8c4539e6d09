"""The TFRecord builder on Apache Beam: ``python -m cxr_tf.build --runner beam`` (Beam's
DirectRunner on this machine) or ``--runner DataflowRunner|FlinkRunner|SparkRunner|...`` with
Beam's own pipeline options. ``[beam]`` extra; docs/beam.md.

The build is the local builder's (``cxr_tf.data.builder``) with step 4, reading and encoding the
films, done by the runner's workers:

1. Here, on the machine that launches the pipeline: the release read by its adapter, the split
   decided once over the whole table, the shards planned and the output folder prepared (resume
   included): ``builder.read_release`` / ``builder.plan_build``, the local builder's own code.
   Each shard still to write gets ``.build/<name>.films.json``: its films, their fields, and the
   URL each film is read from.
2. The pipeline: shard names -> each shard's films -> (reshuffled over the workers) each film
   read through Beam's filesystems and encoded by ``cxr_tf.data.images.film_to_png`` (the local
   builder's encoder) -> grouped by shard -> the shard written by ``shards.write_shard`` (the
   local builder's writer, films in plan order) with its ``.build/<name>.json`` record.
3. Here again: the manifest from those records (``builder.finish_build``); the films lists are
   removed.

So a Beam build and a local build of the same release with the same settings write the same
shards, byte for byte, and the same manifest apart from ``build`` (how long it took, where it ran).
Unreadable films are skipped and listed with the local builder's reasons.

The output folder and the films are reached through ``apache_beam.io.filesystems`` (``BeamFolder``):
a local path, ``gs://`` (``apache-beam[gcp]``) or ``s3://`` (``apache-beam[aws]``). The release's
tables are read on the launching machine by the adapter, which needs ``--data-dir`` as a folder
there; ``films_url`` (``--films-url``) names where the workers find the same films (a bucket the
folder is a mount or a copy of). ``apache_beam`` is imported when a build starts, never by
importing this module.
"""

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from cxr_tf.data import shards
from cxr_tf.data.builder import BuildSettings, finish_build, plan_build, read_release
from cxr_tf.data.jsonfile import write_json

RUNNERS = ("DirectRunner", "PrismRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")
"""Beam runners the commands name in ``--runner`` (``beam`` = DirectRunner, on this machine)."""
INSTALL = "pip install 'cxr_tf[beam]'"


def beam():
    """The ``apache_beam`` module; ImportError telling how to install the ``[beam]`` extra."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its import warns that the BigQuery client is absent (not used here)
    try:
        import apache_beam  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(f"running on Apache Beam needs apache-beam: {INSTALL}", name="apache_beam") from err
    finally:
        root.setLevel(level)
    return apache_beam


def pipeline_options(runner="beam", workers=None, extra=()):
    """Beam ``PipelineOptions`` for ``runner`` (``"beam"``: Beam's Python direct runner,
    ``FnApiRunner``, what the DirectRunner falls back to when it cannot fetch its Prism binary;
    nothing is downloaded), ``workers`` worker processes on it (``direct_num_workers``,
    multi-processing when above 1; default one, in this process), then ``extra``: Beam's own
    options as on its command line (``--project=p``; these win). ValueError
    naming an option Beam does not know (a typo would otherwise be dropped with a log line)."""
    beam()
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    runner = "FnApiRunner" if runner == "beam" else runner
    args = [f"--runner={runner}"]
    if runner in ("FnApiRunner", "DirectRunner") and workers and int(workers) > 1:
        args += [f"--direct_num_workers={int(workers)}", "--direct_running_mode=multi_processing"]
    options = PipelineOptions(args + list(extra))
    checks = logging.getLogger("apache_beam.options.pipeline_options")
    checks.disabled = True  # it would log "Discarding unparseable args" before the error below says so
    try:
        unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    finally:
        checks.disabled = False
    if unknown:
        named = [arg for arg in extra if arg.startswith("--") and arg[2:].split("=")[0].replace("-", "_") in unknown]
        raise ValueError(f"unknown Beam pipeline option(s) {' '.join(named or sorted(unknown))} "
                         "(Beam's options: python -m apache_beam.examples.wordcount --help)")
    return options


def runner_name(options):
    """The runner ``options`` name (Beam's default, DirectRunner, when none)."""
    from apache_beam.options.pipeline_options import StandardOptions  # noqa: PLC0415

    return options.view_as(StandardOptions).runner or "DirectRunner"


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes  # noqa: PLC0415

    return CompressionTypes.UNCOMPRESSED  # never guessed from a name (a film called .gz stays a film)


def read_bytes(url):
    """The bytes of the file at ``url`` (any filesystem Beam knows)."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    with FileSystems.open(url, compression_type=_uncompressed()) as handle:
        return handle.read()


def write_bytes(url, data):
    """Write ``data`` to ``url`` all at once: a ``.tmp`` beside it renamed when complete (a local
    rename is atomic; an object store publishes an object when it is closed)."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    tmp = url + ".tmp"
    with FileSystems.create(tmp, compression_type=_uncompressed()) as handle:
        handle.write(data)
    FileSystems.rename([tmp], [url])


def absolute(url):
    """``url`` itself when it has a scheme (``gs://``), else the absolute local path (the
    DirectRunner's worker processes may start elsewhere)."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    return url if FileSystems.get_scheme(str(url)) not in (None, "file") else os.path.abspath(url)


class BeamFolder:
    """A records folder reached through Beam's filesystems (the ``folder`` interface of
    ``cxr_tf.data.shards``); pickled to the workers as its URL."""

    def __init__(self, url):
        self.url = absolute(str(url))

    def __str__(self):
        return self.url

    def _at(self, name):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

        return FileSystems.join(self.url, *name.split("/"))

    def make(self):
        """Nothing to do: Beam makes a local file's folders when it creates the file; buckets have none."""

    def exists(self, name):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

        return FileSystems.exists(self._at(name))

    def read_text(self, name):
        return read_bytes(self._at(name)).decode("utf-8")

    def write_text(self, name, text):
        write_bytes(self._at(name), text.encode("utf-8"))

    def write_json(self, name, value):
        with tempfile.TemporaryDirectory() as tmp:  # the one JSON writer's bytes (cxr_tf.data.jsonfile)
            self.write_text(name, write_json(Path(tmp) / "value.json", value).read_text(encoding="utf-8"))

    def delete(self, name):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

        if self.exists(name):
            FileSystems.delete([self._at(name)])

    def names(self, suffix):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

        found = FileSystems.match([self._at("*" + suffix)])[0].metadata_list
        return sorted(FileSystems.split(m.path)[1] for m in found)

    def staging(self, name):
        handle, path = tempfile.mkstemp(suffix=f"-{name}")
        os.close(handle)
        return path

    def publish(self, staged, name):
        write_bytes(self._at(name), Path(staged).read_bytes())


def films_name(shard):
    """Where shard ``shard``'s films list lives in the folder while the pipeline runs."""
    return f"{shards.PLAN_DIR}/{shard}.films.json"


def _films_of(shard, folder):
    """(shard, position in the shard, URL) of each film of ``shard``."""
    films = json.loads(folder.read_text(films_name(shard)))
    for position, url in enumerate(films["urls"]):
        yield shard, position, url


def _encode(film, image_size):
    """Read one film ((shard, position, URL)) through Beam's filesystems and encode it as the local
    builder does: (shard, (position, png or None, reason or None))."""
    import cv2  # noqa: PLC0415

    from cxr_tf.data.images import film_to_png  # noqa: PLC0415

    cv2.setNumThreads(1)  # one film per worker thread, as the local builder's workers (images.worker_init)
    shard, position, url = film
    try:
        data = read_bytes(url)
    except Exception as exc:  # noqa: BLE001 - the film's reason, worded as read_image words it
        return shard, (position, None, f"cannot read file ({getattr(exc, 'strerror', None) or exc})")
    return shard, (position, *film_to_png(data, image_size))


def _write(item, folder):
    """Write one shard from its encoded films (any order in, plan order out); returns its name."""
    shard, encoded = item
    films = json.loads(folder.read_text(films_name(shard)))
    ordered = iter([(png, reason) for _, png, reason in sorted(encoded, key=lambda film: film[0])])
    shards.write_shard(folder, films["shard"], films["rows"], ordered)
    return shard


def _url_of(path, data_dir, films_url):
    if films_url is None:
        return absolute(path)
    return films_url.rstrip("/") + "/" + Path(path).relative_to(data_dir).as_posix()


@contextlib.contextmanager
def _films_lists(folder, plan, films_url):
    """Write each shard to do's films list (``films_name``) for the workers; removed afterwards."""
    rows = shards.example_fields(plan.release.table, plan.findings)
    try:
        for shard in plan.todo:
            names = shard["images"]
            folder.write_json(films_name(shard["name"]), {
                "shard": shard, "rows": {n: rows[n] for n in names},
                "urls": [_url_of(rows[n][0], plan.data_dir, films_url) for n in names]})
        yield
    finally:
        for shard in plan.todo:
            folder.delete(films_name(shard["name"]))


def build_records(settings=None, out="records", options=None, films_url=None, log=print, **fields):
    """Build TFRecord shards and their manifest into ``out`` (a path or a URL Beam's filesystems
    know) on a Beam runner; returns the records' ``Manifest``, as ``builder.build_records`` does.

    settings / ``fields``: what to build (``builder.BuildSettings``); options: Beam
    ``PipelineOptions`` (``pipeline_options``; default: the DirectRunner in this process);
    films_url: where the workers read ``data_dir``'s films (default: the paths the adapter found).
    Re-running with the same settings resumes an interrupted build (the local builder can resume
    it too: the folder is the same)."""
    apache_beam = beam()
    started = time.perf_counter()
    settings = dataclasses.replace(settings or BuildSettings(), **fields)
    options = options if options is not None else pipeline_options()
    release, findings, data_dir, lists_dir = read_release(settings)
    folder = BeamFolder(out)
    plan = plan_build(settings, release, findings, data_dir, lists_dir, folder, log)
    encoded = sum(len(s["images"]) for s in plan.todo)
    encode_start = time.perf_counter()
    if plan.todo:
        with _films_lists(folder, plan, films_url), apache_beam.Pipeline(options=options) as pipeline:
            _ = (pipeline
                 | "shards" >> apache_beam.Create([s["name"] for s in plan.todo])
                 | "spread shards" >> apache_beam.Reshuffle()
                 | "films" >> apache_beam.FlatMap(_films_of, folder)
                 | "spread films" >> apache_beam.Reshuffle()
                 | "encode" >> apache_beam.Map(_encode, int(settings.image_size))
                 | "by shard" >> apache_beam.GroupByKey()
                 | "write" >> apache_beam.Map(_write, folder))
    encode_seconds = time.perf_counter() - encode_start
    build = {"seconds": round(time.perf_counter() - started, 3), "encoded": encoded,
             "resumed_shards": len(plan.done),
             "images_per_s": round(encoded / encode_seconds, 2) if encoded else None, "workers": None,
             "runner": runner_name(options)}
    return finish_build(folder, plan, build, log)
