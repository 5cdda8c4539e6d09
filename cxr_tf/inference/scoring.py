"""Scoring an archive of films on Apache Beam: ``python -m cxr_tf.score`` (``[beam]`` extra;
docs/beam.md).

The pipeline: the ``--input`` patterns matched through Beam's filesystems (``fileio.MatchAll``: a
local path, ``gs://``, ``s3://``; ``**`` crosses folders) -> each file read (``fileio.ReadMatches``)
-> ``RunInference`` with ``PredictorHandler``, a ``ModelHandler`` whose model is our
``Predictor``: the input gate, the Monte-Carlo uncertainty, the thresholds and the triage are
``predict``'s, film for film (the MC draws are seeded by each film's pixels and the run, so a
film gets the same numbers in any batch, on any worker) -> the tables.

What it writes under ``--out`` (Beam's sharded files, ``NAME-00000-of-0000N.EXT``):

- ``predictions-*.csv|parquet``: one row per film processed: ``film`` (its path), ``patient_id``,
  ``study_instance_uid``, ``sop_instance_uid`` (from a DICOM header, else empty), ``level``,
  ``action``, ``findings`` and ``borderline`` ("; "-separated), ``message``, ``caveats``
  (" | "-separated), ``gate_passed`` / ``gate_score`` / ``gate_version``, then ``p_<finding>``
  (probability) and ``std_<finding>`` (MC standard deviation) for each of the run's findings.
- ``not_processed-*.csv|parquet``: the error table, one row per film that got no verdict, whatever
  stopped it: a file that could not be read or decoded, a film the input gate refused (inverted,
  rotated, not a radiograph, ...), the gate failing. Columns: ``film``, the three ids, ``reason``
  (a ``cxr_tf.inference.results.REASONS`` code, as in ``predict --json``), ``error`` (the message
  naming the film), and the gate columns (filled when the gate decided). Every film matched is in
  exactly one of the two tables; one bad film never fails the pipeline.
- with ``fhir``: ``fhir-*.ndjson``, one FHIR R4 Bundle per line for every film (a cancelled
  DiagnosticReport for one not processed), as ``predict --format fhir`` makes it
  (``cxr_tf.inference.outputs.fhir``), for a FHIR server's bulk import.

The run folder may be a local path (it must then be on every worker's disk: a DirectRunner, or a
container image) or a ``gs://`` / ``s3://`` URL: each worker copies it once into a temporary folder.
This module imports ``apache_beam``: import it only where the extra is installed.
"""

import csv
import io
import json
import tempfile
import time
from pathlib import Path

from cxr_tf import runs
from cxr_tf.data.beam_build import absolute, beam, read_bytes, runner_name

apache_beam = beam()

from apache_beam.io import fileio  # noqa: E402 (after the import that says how to install Beam)
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference  # noqa: E402

TABLE_FORMATS = ("csv", "parquet")
IDENTITY = (("patient_id", "PatientID"), ("study_instance_uid", "StudyInstanceUID"),
            ("sop_instance_uid", "SOPInstanceUID"))
GATE = ("gate_passed", "gate_score", "gate_version")
VERDICT = ("level", "action", "findings", "borderline", "message", "caveats")
ERROR = ("reason", "error")
_UNREAD, _NOT_PROCESSED, _FHIR = "unread", "not_processed", "fhir"


def prediction_columns(labels):
    """The predictions table's columns for a run predicting ``labels``."""
    return ("film", *(c for c, _ in IDENTITY), *VERDICT, *GATE, *(f"p_{f}" for f in labels),
            *(f"std_{f}" for f in labels))


NOT_PROCESSED_COLUMNS = ("film", *(c for c, _ in IDENTITY), *ERROR, *GATE)


def local_run(model):
    """A run folder on this machine: ``model`` resolved (``runs.resolve_run_dir``) when it is a local
    path, else a copy of the run at that URL (``gs://bucket/run``) in a new temporary folder."""
    if FileSystems.get_scheme(str(model)) in (None, "file"):
        return runs.resolve_run_dir(model)
    prefix = str(model).rstrip("/") + "/"
    target = Path(tempfile.mkdtemp(prefix="cxr_tf-run-"))
    for found in FileSystems.match([prefix + "**"])[0].metadata_list:
        copy = target / found.path[len(prefix):]
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(read_bytes(found.path))
    return runs.resolve_run_dir(target)


def film_rows(result, predictor, fhir=False):
    """(table name, row) of one ``FilmResult`` (``predictions`` or ``not_processed``), and its FHIR
    Bundle as one line of JSON when ``fhir``, else None."""
    data = result.as_dict()
    header = result.header
    row = {"film": result.file}
    for column, keyword in IDENTITY:
        value = header.get(keyword) if header is not None else None
        row[column] = str(value) if value else None
    gate = data.get("gate") or {}
    gate_row = {"gate_passed": gate.get("passed"), "gate_score": gate.get("score"),
                "gate_version": "off" if gate.get("off") else gate.get("version")}
    if result.ok:
        row.update(level=data["triage"]["level"], action=data["triage"]["action"],
                   findings="; ".join(data["findings"]), borderline="; ".join(data.get("borderline", [])),
                   message=data["message"], caveats=" | ".join(data.get("caveats", [])), **gate_row)
        row.update({f"p_{f}": p for f, p in data["probabilities"].items()})
        row.update({f"std_{f}": s for f, s in data["uncertainty"].items()})
        table = "predictions"
    else:
        row.update(reason=data["reason"], error=data["error"], **gate_row)
        table = _NOT_PROCESSED
    bundle = None
    if fhir:
        from cxr_tf.inference.outputs import fhir as fhir_output  # noqa: PLC0415

        bundle = json.dumps(fhir_output.answer(result, predictor))
    return table, row, bundle


class PredictorHandler(ModelHandler):
    """RunInference's model handler around ``Predictor``: examples are (film name, file bytes);
    each prediction is ``film_rows`` of the film's result. The Predictor (its model, gate and
    thresholds) is loaded once per worker process; ``batch_size`` films go through it at a time."""

    def __init__(self, model, predictor_options, fhir=False):
        super().__init__()
        self.model, self.options, self.fhir = str(model), dict(predictor_options), bool(fhir)

    def load_model(self):
        from cxr_tf.inference.predictor import Predictor  # noqa: PLC0415

        return Predictor(local_run(self.model), **self.options)

    def run_inference(self, batch, model, inference_args=None):
        results = model.predict(list(batch))
        return [PredictionResult(name, film_rows(result, model, self.fhir))
                for (name, _), result in zip(batch, results)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": int(self.options.get("batch_size", 16))}

    def get_num_bytes(self, batch):
        return sum(len(data) for _, data in batch)


def _read(readable, max_bytes):
    """(path, bytes) of a matched file; a file too large or unreadable goes to the error table."""
    from cxr_tf.inference.results import FilmResult, NotProcessed  # noqa: PLC0415

    path = readable.metadata.path
    try:
        if readable.metadata.size_in_bytes > max_bytes:
            raise ValueError(f"{readable.metadata.size_in_bytes:,} bytes exceeds the file-size limit of "
                             f"{max_bytes:,} bytes")
        with readable.open() as handle:
            yield path, handle.read()
    except Exception as err:  # noqa: BLE001 - this film's error, never the pipeline's
        result = FilmResult(path, not_processed=NotProcessed("unreadable", f"{path}: {err}"))
        yield apache_beam.pvalue.TaggedOutput(_UNREAD, film_rows(result, None)[1])


def _route(prediction):
    """Each scored film's row to its table, and its Bundle to the FHIR lines."""
    table, row, bundle = prediction.inference
    apache_beam.metrics.Metrics.counter("cxr_tf", table).inc()
    yield apache_beam.pvalue.TaggedOutput(table, row)
    if bundle is not None:
        yield apache_beam.pvalue.TaggedOutput(_FHIR, bundle)


def _csv_line(row, columns):
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(["" if row.get(c) is None else row[c] for c in columns])
    return text.getvalue()


def _write_table(rows, prefix, columns, table_format, name):
    if table_format == "csv":
        header = _csv_line({c: c for c in columns}, columns)
        return (rows | f"{name} as csv" >> apache_beam.Map(_csv_line, columns)
                | f"write {name}" >> apache_beam.io.WriteToText(prefix, file_name_suffix=".csv", header=header))
    import pyarrow  # noqa: PLC0415 (installed with apache-beam)

    def kind(column):
        if column.startswith(("p_", "std_")) or column == "gate_score":
            return pyarrow.float64()
        return pyarrow.bool_() if column == "gate_passed" else pyarrow.string()

    schema = pyarrow.schema([(c, kind(c)) for c in columns])
    return (rows | f"{name} columns" >> apache_beam.Map(lambda row: {c: row.get(c) for c in columns})
            | f"write {name}" >> apache_beam.io.WriteToParquet(prefix, schema, file_name_suffix=".parquet"))


def score(model, patterns, out, predictor_options=None, table_format="csv", fhir=False, options=None, log=print):
    """Score every film matching ``patterns`` with the run ``model`` on a Beam runner, writing the
    tables of the module docstring under ``out`` (a path or URL). predictor_options: keywords of
    ``Predictor`` (samples, seed, critical, gate, ...); options: Beam ``PipelineOptions``
    (``beam_build.pipeline_options``; default: in this process). Returns {"processed",
    "not_processed", "seconds", "runner", "out"}. FileNotFoundError naming a pattern that matches
    no file; the Predictor's own errors (a bad run or option) before any film is read."""
    from cxr_tf.data.beam_build import pipeline_options  # noqa: PLC0415
    from cxr_tf.inference.predictor import Predictor  # noqa: PLC0415
    from cxr_tf.inference.readers import Limits  # noqa: PLC0415

    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table format {table_format!r}: expected one of {', '.join(TABLE_FORMATS)}")
    started = time.perf_counter()
    predictor_options = dict(predictor_options or {})
    options = options if options is not None else pipeline_options()
    run_dir = local_run(model)
    labels = Predictor(run_dir, **predictor_options).labels  # a bad run or option: said now, not on a worker
    worker_model = model if FileSystems.get_scheme(str(model)) not in (None, "file") else run_dir.resolve()
    patterns = [absolute(str(p)) for p in patterns]
    for pattern, found in zip(patterns, FileSystems.match(patterns)):
        if not found.metadata_list:
            raise FileNotFoundError(f"--input {pattern} matches no file (a folder's films: {pattern}/**)")
    out = absolute(str(out))
    handler = PredictorHandler(worker_model, predictor_options, fhir)
    pipeline = apache_beam.Pipeline(options=options)
    files = (pipeline | "patterns" >> apache_beam.Create(patterns) | "match" >> fileio.MatchAll()
             | "open" >> fileio.ReadMatches() | "spread" >> apache_beam.Reshuffle())
    read = files | "read" >> apache_beam.FlatMap(_read, Limits().max_bytes).with_outputs(_UNREAD, main="films")
    scored = (read.films | "score" >> RunInference(handler)
              | "route" >> apache_beam.FlatMap(_route).with_outputs("predictions", _NOT_PROCESSED, _FHIR))
    _write_table(scored.predictions, FileSystems.join(out, "predictions"), prediction_columns(labels),
                 table_format, "predictions")
    failed = ((scored[_NOT_PROCESSED], read[_UNREAD] | "count unread" >> apache_beam.Map(_count_unread))
              | "not processed" >> apache_beam.Flatten())
    _write_table(failed, FileSystems.join(out, _NOT_PROCESSED), NOT_PROCESSED_COLUMNS, table_format, _NOT_PROCESSED)
    if fhir:
        _ = scored[_FHIR] | "write fhir" >> apache_beam.io.WriteToText(FileSystems.join(out, "fhir"),
                                                                       file_name_suffix=".ndjson")
    result = pipeline.run()
    result.wait_until_finish()
    counts = {}
    for counter in result.metrics().query(apache_beam.metrics.MetricsFilter().with_namespace("cxr_tf"))["counters"]:
        counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + counter.committed
    summary = {"processed": counts.get("predictions", 0), "not_processed": counts.get(_NOT_PROCESSED, 0),
               "seconds": round(time.perf_counter() - started, 3), "runner": runner_name(options), "out": out}
    log(f"scored {summary['processed'] + summary['not_processed']} film(s) on Beam {summary['runner']} in "
        f"{summary['seconds']:.1f} s: {summary['processed']} processed (predictions-*), {summary['not_processed']} "
        f"not processed (not_processed-*: unreadable, or refused by the input gate) in {out}")
    return summary


def _count_unread(row):
    apache_beam.metrics.Metrics.counter("cxr_tf", _NOT_PROCESSED).inc()
    return row
