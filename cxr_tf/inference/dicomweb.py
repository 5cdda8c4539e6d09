"""A DICOMweb front end: triage the chest radiographs an archive holds, and store the reports back
in it (dicomweb-client).

Flow (``docs/conformance.md``)::

    archive --QIDO-RS (new CR/DX instances)--> [cursor] --WADO-RS--> Predictor.predict (the input gate
    runs there) --> dicom-sr (+ heatmap-pm) --STOW-RS--> archive, in the film's study

- **Pull.** ``poll()`` asks QIDO-RS for the CR and DX instances of studies dated from the cursor's
  ``since`` day on, and keeps those it has not handled. The cursor (a JSON file, written atomically
  after every film) holds ``since`` and the SOP Instance UIDs handled, each recorded once its
  results are stored or, when the archive refuses them, kept: a restart neither repeats a film
  whose results were stored nor skips one that was not handled. (A film whose STOW succeeded and
  whose cursor write was cut short by a crash is triaged again: the one case of a repeat.)
- **Triage.** WADO-RS retrieves the instance; the node's header checks (``dicom_exchange.chest_problem``)
  and ``Predictor.predict`` (reader, input gate, model) decide; every film gets a report through the
  output registry: the triage, or "received, not analysed" with the reason (``results.NotProcessed``).
- **Push.** STOW-RS of the report (and Parametric Maps of positive findings with ``heatmaps``) to
  the film's study. The STOW response is checked: an instance it does not list as stored (a 200
  that stored nothing, dicomweb-client #42) counts as a failure. Failures are retried with
  exponential back-off; ``stop()`` writes what is still unstored under ``keep_unsent`` (when given),
  logs each, and reports them: nothing is lost silently.
- **Auth.** ``auth``: None, ``("basic", user, password)`` or ``("bearer", token)``, on every request.
"""

import dataclasses
import datetime
import io
import json
import logging
import time
from pathlib import Path

from cxr_tf.data.jsonfile import write_json
from cxr_tf.inference.dicom_exchange import RADIOGRAPHS, chest_problem, header_only, keep_unsent, retry_later
from cxr_tf.inference.outputs import FORMATS
from cxr_tf.inference.readers import Film
from cxr_tf.inference.results import FilmResult, NotProcessed

log = logging.getLogger(__name__)

MODALITIES = ("CR", "DX")
SOP_INSTANCE_UID, STUDY_UID, SERIES_UID, STUDY_DATE = "00080018", "0020000D", "0020000E", "00080020"


def _first(attributes, tag):
    values = attributes.get(tag, {}).get("Value") or [None]
    return values[0]


def make_session(auth=None):
    """A ``requests.Session`` carrying ``auth``: None, ("basic", user, password) or ("bearer", token)."""
    import requests

    session = requests.Session()
    if auth is None:
        return session
    kind, *values = auth
    if kind == "basic" and len(values) == 2:
        session.auth = requests.auth.HTTPBasicAuth(*values)
    elif kind == "bearer" and len(values) == 1 and values[0]:
        session.headers["Authorization"] = f"Bearer {values[0]}"
    else:
        raise ValueError(f"auth {kind!r}: expected ('basic', user, password) or ('bearer', token)")
    return session


class Cursor:
    """What the front end has handled: ``since`` (YYYYMMDD, the first study date it asks for) and the
    SOP Instance UIDs handled, in ``path`` (JSON, written atomically after each film)."""

    def __init__(self, path, since=None):
        self.path = Path(path)
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text())
                self.since, self.done = str(state["since"]), dict(state["done"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path}: not a cursor file of the DICOMweb front end ({err}); "
                                 "move it away to start afresh") from None
        else:
            self.since = since or datetime.date.today().strftime("%Y%m%d")
            self.done = {}
        if not (len(self.since) == 8 and self.since.isdigit()):
            raise ValueError(f"since={self.since!r}: expected a date YYYYMMDD")

    def handled(self, sop_uid, outcome):
        self.done[sop_uid] = outcome
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"since": self.since, "done": self.done})


@dataclasses.dataclass
class Unstored:
    """Objects of one film the archive has not stored yet."""

    sop_uid: str
    study_uid: str
    objects: list
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""


class DicomWebFrontEnd:
    """``DicomWebFrontEnd(predictor, url, cursor_path).run_once()`` (or ``run(stop_event)``), then ``stop()``.

    url: the DICOMweb root (e.g. ``http://pacs:8042/dicom-web``); cursor_path: the cursor file
    (``Cursor``); since: the first study date (YYYYMMDD) of a new cursor (default today); auth: see
    ``make_session``; heatmaps: also store Grad-CAM maps (``heatmap_format``) of positive findings;
    keep_unsent: a folder for what could not be stored by ``stop()``. ``stats``: counters;
    ``latencies``: seconds from a film's retrieval to its report's successful STOW; ``stored_at``:
    {SOP Instance UID: ``time.monotonic()`` of that STOW}."""

    def __init__(self, predictor, url, cursor_path, since=None, auth=None, heatmaps=False,
                 heatmap_format="heatmap-pm", keep_unsent=None, retry_initial=1.0, retry_max=60.0, timeout=60.0):
        from dicomweb_client.api import DICOMwebClient

        if heatmap_format not in ("heatmap-pm", "heatmap-sc"):
            raise ValueError(f"heatmap_format={heatmap_format!r}: expected heatmap-pm or heatmap-sc")
        self.predictor = predictor
        self.url = url.rstrip("/")
        # chunk_size: one STOW body, never a chunked upload (Orthanc stored nothing from those: #42)
        self.client = DICOMwebClient(self.url, session=make_session(auth), chunk_size=1 << 30, timeout=timeout)
        self.cursor = Cursor(cursor_path, since)
        self.heatmaps, self.heatmap_format = heatmaps, heatmap_format
        self.keep_unsent = Path(keep_unsent) if keep_unsent else None
        self.retry_initial, self.retry_max = float(retry_initial), float(retry_max)
        self.stats = {"triaged": 0, "not_processed": 0, "stored": 0, "store_failures": 0, "failed": 0}
        self.latencies = []
        self.stored_at = {}  # SOP Instance UID -> time.monotonic() when its results were stored
        self.unstored = []  # [Unstored]
        for name in ("dicom-sr", *((heatmap_format,) if heatmaps else ())):
            FORMATS[name].check()

    # ------------------------------------------------------------------ pulling

    def new_instances(self):
        """[(study, series, SOP Instance UID)] of CR/DX instances from ``since`` on, not yet handled."""
        found = {}
        for modality in MODALITIES:
            answer = self.client.search_for_instances(
                search_filters={"Modality": modality, "StudyDate": f"{self.cursor.since}-"},
                fields=["StudyDate", "SOPClassUID"], get_remaining=True)
            for attributes in answer:
                sop = _first(attributes, SOP_INSTANCE_UID)
                if sop and sop not in self.cursor.done:
                    found[sop] = (_first(attributes, STUDY_UID), _first(attributes, SERIES_UID), sop)
        return list(found.values())

    def run_once(self):
        """Triage every new instance and store its results (retrying what fails until it is due);
        returns the number of films handled."""
        todo = self.new_instances()
        for study, series, sop in todo:
            self._film(study, series, sop)
        self._store_due()
        return len(todo)

    def run(self, stop_event, poll_seconds=10.0):
        """Poll until ``stop_event`` is set."""
        while not stop_event.is_set():
            try:
                self.run_once()
            except Exception as err:  # noqa: BLE001 - an archive that is down: log, wait, ask again
                log.warning("DICOMweb poll of %s failed: %s; retrying in %.0f s", self.url, err, poll_seconds)
            stop_event.wait(poll_seconds if not self.unstored else min(poll_seconds, self.retry_initial))

    def _film(self, study, series, sop):
        start = time.monotonic()
        try:
            ds = self.client.retrieve_instance(study, series, sop)
        except Exception as err:  # noqa: BLE001 - not retrieved: not handled; asked again next poll
            log.warning("WADO-RS of SOP Instance %s failed: %s; next poll tries again", sop, err)
            return
        try:
            objects, outcome = self._results(ds, sop)
        except Exception:
            log.exception("could not build the results of SOP Instance %s", sop)
            self.stats["failed"] += 1
            self.cursor.handled(sop, "failed")
            return
        pending = Unstored(sop, study, objects)
        if self._store(pending):
            self.stored_at[sop] = time.monotonic()
            self.latencies.append(self.stored_at[sop] - start)
            self.cursor.handled(sop, outcome)
        else:
            self.unstored.append(pending)

    def _results(self, ds, sop):
        """(DICOM objects to store, outcome) of one retrieved instance."""
        name = f"SOP Instance {sop}"
        problem = chest_problem(ds)
        if problem:
            result = self._refused(ds, name, NotProcessed("not_chest_radiograph", f"{name}: {problem}"))
        else:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            [result] = self.predictor.predict([(name, buf.getvalue())])
            if result.film is None:  # unreadable: the report names the film from its header
                result = self._refused(ds, name, result.not_processed)
        objects = [o.value for o in FORMATS["dicom-sr"].write(result, self.predictor)]
        if result.ok:
            self.stats["triaged"] += 1
            log.info("triaged %s: %s (%s)", name, result.verdict["triage"]["level"], result.verdict["message"])
            if self.heatmaps and result.findings:
                objects += [o.value for o in FORMATS[self.heatmap_format].write(result, self.predictor)]
            return objects, "processed"
        self.stats["not_processed"] += 1
        log.warning("not processed %s: %s", name, result.error)
        return objects, f"not processed: {result.not_processed.reason}"

    @staticmethod
    def _refused(ds, name, not_processed):
        header = header_only(ds) if str(ds.get("SOPClassUID", "")) in RADIOGRAPHS else None
        film = None if header is None else Film(name, None, "dicom", header=header)
        return FilmResult(name, film=film, not_processed=not_processed)

    # ------------------------------------------------------------------ pushing

    def _store(self, pending):
        """STOW-RS of the objects not yet stored; True when the archive lists every one as stored."""
        if not pending.objects:
            return True
        try:
            answer = self.client.store_instances(pending.objects, study_instance_uid=pending.study_uid)
            answer = answer if answer is not None else {}
            stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence") or []}
            failed = answer.get("FailedSOPSequence")
        except Exception as err:  # noqa: BLE001 - HTTP errors, timeouts, refused connections
            return self._failed(pending, f"STOW-RS failed: {err}")
        pending.objects = [o for o in pending.objects if str(o.SOPInstanceUID) not in stored]
        self.stats["stored"] += len(stored)
        if pending.objects:
            why = "the archive listed them as failed" if failed else "the archive did not list them as stored"
            return self._failed(pending, f"{len(pending.objects)} object(s) not stored: {why}")
        return True

    def _failed(self, pending, error):
        delay = retry_later(pending, error, self.retry_initial, self.retry_max)
        self.stats["store_failures"] += 1
        log.warning("could not store results of SOP Instance %s (attempt %d): %s; retrying in %.1f s",
                    pending.sop_uid, pending.attempts, error, delay)
        return False

    def _store_due(self, force=False):
        now = time.monotonic()
        for pending in [p for p in self.unstored if force or p.next_try <= now]:
            if self._store(pending):
                self.stored_at[pending.sop_uid] = time.monotonic()
                self.unstored.remove(pending)
                self.cursor.handled(pending.sop_uid, "processed (stored late)")

    def stop(self, drain_timeout=None):
        """Try what is unstored until ``drain_timeout`` (default ``retry_max``) seconds pass; then keep
        and report the rest. Returns {"triaged", "not_processed", "failed", "unsent": [SOP Instance UIDs]}."""
        deadline = time.monotonic() + (self.retry_max if drain_timeout is None else drain_timeout)
        while self.unstored and time.monotonic() < deadline:
            self._store_due(force=True)
            if self.unstored:
                time.sleep(min(self.retry_initial, max(0.0, deadline - time.monotonic())))
        for pending in self.unstored:
            log.error("NOT STORED: results of SOP Instance %s (%d object(s)) at %s after %d attempt(s): %s%s",
                      pending.sop_uid, len(pending.objects), self.url, pending.attempts, pending.error,
                      "" if self.keep_unsent else "; rerun with --keep-unsent DIR to keep them")
            if self.keep_unsent:
                folder = keep_unsent(pending, self.keep_unsent)
                self.cursor.handled(pending.sop_uid, f"kept unstored in {folder}")
        return {"triaged": self.stats["triaged"], "not_processed": self.stats["not_processed"],
                "failed": self.stats["failed"], "unsent": sorted(p.sop_uid for p in self.unstored)}
