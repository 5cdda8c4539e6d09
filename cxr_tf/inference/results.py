"""One film's answer: :class:`FilmResult`, what ``Predictor.predict`` returns for every film
it is given, in the order given, whether the film could be read or not.

A result carries the film as read (``readers.Film``: pixels and, for DICOM, its header), the
model's input for it (for Grad-CAM), and either the verdict (probabilities, uncertainty,
findings, borderline, triage, message, caveats; ``cxr_tf.inference.triage``) or the error
that kept the film from one. ``as_dict()`` is the JSON object of ``predict --json`` and the
service::

    {"file", "probabilities": {finding: p}, "uncertainty": {finding: std}, "findings": [...],
     "borderline": [...], "triage": {"level", "action"}, "message", "caveats": [...]}
    {"file", "error"}

Front ends add their own keys (``extras``: ``"gradcam"``, ``"images"``, ``"outputs"``) after
these. Output formats (``cxr_tf.inference.outputs``) read results, never tuples.
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from cxr_tf.inference.readers import Film, FilmError

log = logging.getLogger(__name__)


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
    error: str | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self):
        """True when the film was read and triaged."""
        return self.error is None and self.verdict is not None

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
        """This result turned into an error result (a later step, e.g. an output, failed)."""
        return FilmResult(self.file, film=self.film, error=error)

    def as_dict(self):
        """The JSON object of the film (module docstring)."""
        if self.error is not None:
            return {"file": self.file, "error": self.error, **self.extras}
        return {"file": self.file, **self.verdict, **self.extras}


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
