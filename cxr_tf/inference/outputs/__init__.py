"""The registry of output formats: one table, name -> writer, read by every front end.

``predict --format NAME --out DIR`` writes each film's outputs as files, the web service
answers ``?format=NAME`` with one JSON object per film (formats marked ``answers``), and the
DICOM node sends the DICOM formats to its destination. Each format is one module of this
package that defines::

    write(result, predictor) -> [Output]   # a triaged FilmResult (cxr_tf.inference.results)
    answer(result, predictor) -> dict      # only formats that ``answers``: any FilmResult,
                                           # a film that failed included

============= ============================== ================================================
format        file (``predict --out``)       content
============= ============================== ================================================
json          ``<stem>.json``                the ``predict --json`` object of the film
fhir          ``<stem>.fhir.json``           FHIR R4 Bundle (``outputs.fhir``)
dicom-sr      ``<stem>.sr.dcm``              TID 1500 report in a Comprehensive 3D SR (``outputs.dicom_sr``);
                                             a film not processed: the report saying so and why
heatmap-pm    ``<stem>_<finding>.pm.dcm``    Grad-CAM Parametric Map (float) per positive finding
heatmap-sc    ``<stem>_<finding>.sc.dcm``    Grad-CAM Secondary Capture per positive finding (legacy viewers)
============= ============================== ================================================

The DICOM formats need a DICOM film: their objects join the film's study and reference it
(an object with an invented study would land in the PACS as a second, unrelated study of a
patient it cannot name). A PNG/JPEG film gets a per-film error saying so (a film not processed
gets nothing from them and keeps its own reason). A format whose
extra is not installed raises ``MissingExtra`` (``check``) naming what to install, before any
film is read. Adding a format: one module here with ``write`` (and ``answer``), one row in
``FORMATS``, one test (docs/architecture.md).
"""

import dataclasses
import importlib
import io
import json
from pathlib import Path

from cxr_tf.inference.extras import require
from cxr_tf.inference.results import unique_stems


@dataclasses.dataclass(frozen=True)
class Output:
    """One object a format made for one film: ``suffix`` (appended to the film's stem) and
    ``value``: a JSON-ready dict, text, bytes, or a pydicom Dataset (a DICOM object)."""

    suffix: str
    value: object

    def encode(self):
        """The bytes of a file holding ``value`` (DICOM: Part 10)."""
        if isinstance(self.value, bytes):
            return self.value
        if isinstance(self.value, str):
            return self.value.encode()
        if isinstance(self.value, dict):
            return json.dumps(self.value, indent=2).encode()
        buf = io.BytesIO()
        self.value.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """One row of the registry: ``module`` (in this package) writes it; ``requires``: the
    modules of the cxr_tf ``extra`` it needs; ``dicom``: it makes DICOM objects of the film's
    study (a DICOM film needed); ``answers``: it can answer the service with one JSON object."""

    name: str
    module: str
    summary: str
    extra: str | None = None
    requires: tuple = ()
    dicom: bool = False
    answers: bool = False
    not_processed: bool = False

    def check(self):
        """Raise ``MissingExtra`` (one line: what to install) when this format cannot run here."""
        for module in self.requires:
            require(module, self.extra, f"the {self.name} output")
        return self

    def _module(self):
        self.check()
        return importlib.import_module(f"{__name__}.{self.module}")

    def write(self, result, predictor):
        """[Output] of a ``result`` (triaged, or not processed for a format that renders those);
        ValueError naming the film when it cannot be made."""
        if self.dicom and result.header is None:
            if not result.ok:  # a PNG, or a file unread: nothing to join; its own reason stands
                return []
            raise ValueError(f"{result.file}: --format {self.name} needs a DICOM film (it joins the film's study "
                             "and references it); use --format fhir or json for PNG/JPEG films")
        return self._module().write(result, predictor)

    def answer(self, result, predictor):
        """The JSON answer of one film (a failed film included) for a format that ``answers``."""
        return self._module().answer(result, predictor)


FORMATS = {f.name: f for f in (
    OutputFormat("json", "json_result", "the predict --json object of the film", answers=True, not_processed=True),
    OutputFormat("fhir", "fhir", "a FHIR R4 Bundle (DiagnosticReport, Observations, Device)", extra="dicom",
                 requires=("fhir.resources",), answers=True, not_processed=True),
    OutputFormat("dicom-sr", "dicom_sr", "a DICOM TID 1500 Measurement Report (Comprehensive 3D SR) in the "
                 "film's study, also for a film not processed (DICOM films only)", extra="dicom",
                 requires=("highdicom",), dicom=True, not_processed=True),
    OutputFormat("heatmap-pm", "heatmap_pm", "a Grad-CAM DICOM Parametric Map (float) per positive finding "
                 "(DICOM films only)", extra="dicom", requires=("highdicom",), dicom=True),
    OutputFormat("heatmap-sc", "heatmap_sc", "a Grad-CAM DICOM Secondary Capture per positive finding, for "
                 "viewers without Parametric Map support (DICOM films only)", extra="dicom",
                 requires=("highdicom",), dicom=True),
)}
"""Every output format, by name."""


def answer_formats():
    """The names of the formats the web service can answer with (``?format=``)."""
    return tuple(name for name, f in FORMATS.items() if f.answers)


def get(name):
    """The format called ``name``; ValueError listing the formats for an unknown one."""
    if name not in FORMATS:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def write_files(predictor, results, formats, out_dir):
    """Write each result's outputs in ``formats`` (names) under ``out_dir``: every format for a
    triaged film, those that render it (``not_processed``) for a film not processed.

    Returns the results in the same order, each with ``extras["outputs"]`` (the paths written);
    a triaged film whose outputs could not be made is turned into a "not processed" result
    naming it (nothing written for it). Stems that repeat get a "_" appended."""
    chosen = [get(name).check() for name in formats]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(results)
    written = []
    for result in results:
        try:
            outputs = [output for fmt in chosen if result.ok or fmt.not_processed
                       for output in fmt.write(result, predictor)]
        except Exception as err:  # e.g. a PNG film for a DICOM format; any failure costs this film only
            text = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            written.append(result.failed(text if text.startswith(f"{result.file}: ") else f"{result.file}: {text}"))
            continue
        paths = []
        for output in outputs:
            target = out_dir / f"{stems[id(result)]}{output.suffix}"
            target.write_bytes(output.encode())
            paths.append(str(target))
        result.extras["outputs"] = paths
        written.append(result)
    return written
