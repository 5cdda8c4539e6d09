"""One film's answer: :class:`FilmResult`, what ``Predictor.predict`` returns for every film
it is given, in the order given, whether the film could be read or not.

A result carries the film as read (``readers.Film``: pixels and, for DICOM, its header), the
model's input for it (for Grad-CAM), and either the verdict (probabilities, uncertainty,
findings, borderline, triage, message, caveats; ``cxr_tf.inference.triage``) or
:class:`NotProcessed`: why the film got no verdict. "Not processed" is the one answer every front
end gives a film it received and did not analyse, whoever refused it: a reader (unreadable), the
DICOM node's header checks (not a chest radiograph), or the input gate (``cxr_tf.inference.gate``:
inverted, rotated, not a radiograph, ...). ``as_dict()`` is the JSON object of ``predict --json``
and the service::

    {"file", "status": "processed", "probabilities": {finding: p}, "uncertainty": {finding: std},
     "findings": [...], "borderline": [...], "triage": {"level", "action"}, "message",
     "caveats": [...], "gate": {"version", "passed", "score", "scores"}}
    {"file", "status": "not processed", "reason": REASONS key, "error": "<file>: why",
     "gate": {...} (when the gate decided)}

Front ends add their own keys (``extras``: ``"gradcam"``, ``"images"``, ``"outputs"``) after
these. Output formats (``cxr_tf.inference.outputs``) read results, never tuples; each renders a
"not processed" result its own way (JSON above; FHIR a cancelled DiagnosticReport).
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from cxr_tf.inference.readers import Film, FilmError

log = logging.getLogger(__name__)


REASONS = {
    "unreadable": "the file could not be read as a film",
    "not_chest_radiograph": "its header says it is not a chest radiograph",
    "output_failed": "its result could not be written",
    "gate_failed": "the input gate could not score it",
    "analysis_failed": "the model could not be run on it",
    # the input gate's refusals (cxr_tf.inference.gate.REASONS says each in full)
    "inverted": "its grey scale is inverted",
    "rotated": "it is rotated",
    "lungs_not_in_view": "the lungs are not in view",
    "blank": "it is blank",
    "not_radiograph": "it is not a radiograph",
    "blurred": "it is too blurred to read",
}
"""Why a film was not processed: code -> short phrase. Codes are stable (JSON, FHIR, DICOM)."""


@dataclasses.dataclass(frozen=True)
class NotProcessed:
    """Why a film received got no verdict: a ``REASONS`` code and a message naming the film."""

    reason: str
    message: str

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"not-processed reason {self.reason!r}: expected one of {', '.join(REASONS)}")


@dataclasses.dataclass
class FilmResult:
    """The answer for one film: a verdict, or an error naming the film and why."""

    file: str
    film: Film | None = None
    x: np.ndarray | None = dataclasses.field(default=None, repr=False)
    """The model's pixels (1, S, S, 1) float32 0..255."""
    meta: np.ndarray | None = dataclasses.field(default=None, repr=False)
    """The model's metadata input (1, 5), multimodal runs only."""
    verdict: dict | None = None
    not_processed: NotProcessed | None = None
    gate: dict | None = None
    """The input gate's record of the film (``Screening.as_dict``, or ``gate.OFF``), once screened."""
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self):
        """True when the film was read and triaged."""
        return self.not_processed is None and self.verdict is not None

    @property
    def error(self):
        """The message of a film not processed (naming the film and why), else None."""
        return None if self.not_processed is None else self.not_processed.message

    @property
    def probabilities(self):
        return self.verdict["probabilities"]

    @property
    def findings(self):
        return self.verdict["findings"]

    @property
    def header(self):
        """The film's DICOM header (pydicom Dataset without pixels), or None (PNG/JPEG, unread)."""
        return None if self.film is None else self.film.header

    def failed(self, error):
        """This result turned into a "not processed" one (a later step, e.g. an output, failed)."""
        return FilmResult(self.file, film=self.film, not_processed=NotProcessed("output_failed", error),
                          gate=self.gate)

    def as_dict(self):
        """The JSON object of the film (module docstring)."""
        gate = {} if self.gate is None else {"gate": self.gate}
        if self.not_processed is not None:
            return {"file": self.file, "status": "not processed", "reason": self.not_processed.reason,
                    "error": self.not_processed.message, **gate, **self.extras}
        return {"file": self.file, "status": "processed", **self.verdict, **gate, **self.extras}


def unreadable(name, err):
    """The "not processed" result of a film that could not be read or prepared."""
    return FilmResult(name, not_processed=NotProcessed("unreadable", error_text(name, err)))


def error_text(name, err):
    """The per-film error message of ``err``: a FilmError's own text (it names the file),
    else the file, the exception type and its first line (an unforeseen failure while
    preparing one film is that film's error, not the batch's)."""
    if isinstance(err, FilmError):
        return str(err)
    log.warning("unexpected error preparing %s", name, exc_info=err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{name}: could not be prepared ({type(err).__name__}: {first})"


def unique_stems(results):
    """{id(result): file stem} of ``results``, with a "_" appended to a stem that repeats (one
    name in two folders), so files written per film never overwrite each other."""
    used, stems = set(), {}
    for result in results:
        stem = Path(result.file).stem
        while stem in used:
            stem += "_"
        used.add(stem)
        stems[id(result)] = stem
    return stems
