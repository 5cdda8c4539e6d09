"""A DICOM node that triages chest radiographs as they arrive and answers with a TID 1500
Structured Report (and Grad-CAM Parametric Maps, or Secondary Captures for legacy viewers) sent
to a destination AE.

Flow (``docs/integration.md``)::

    modality / PACS --C-STORE--> [Storage SCP: allowlist, check, read, screen, spool]  --queue-->
    [worker: triage, SR, heatmaps, FHIR]  --outbox (spool)-->  C-STORE to the destination (PACS)

- The SCP (pynetdicom) takes associations from the callers ``allow`` lists (``dicom_access``), up
  to ``max_associations`` at once, and accepts every storage SOP class so that it can *answer* what
  it will not triage: a film that is not a chest radiograph (``chest_problem``), that cannot be read
  (``readers`` raises ``FilmError``) or that the input gate refuses gets a failure status (0xC000
  family) with an Error Comment and a log line naming its SOP Instance UID and the reason; a
  refused CR, DX or SC image whose header names its study also gets a "received, not analysed"
  report in that study (``dicom-sr`` of a ``NotProcessed`` result), once per SOP Instance.
- Delivery guarantee: a film answered 0x0000 always gets a report in its study, its triage or the
  "not processed" report with the reason. With a ``spool`` (``cxr_tf.inference.spool``) the node
  answers 0x0000 once the film is fsynced in the spool's inbox and keeps every result in its outbox
  until the destination confirms it; a restart after a crash resumes both. Without one (in memory)
  it answers 0x0000 only once the film's report exists; a crash then loses the reports not yet
  delivered. Report UIDs derive from the film's SOP Instance UID and the model, so a report sent
  twice replaces itself.
- One worker thread runs the model (loaded once) on whatever has queued up (one MC run per batch
  of up to ``max_batch`` films), builds the SR (+ heatmaps) and sends them (``dicom_outbox``,
  retried with back-off while the destination is down). ``stop()`` stops accepting, finishes the
  queue, tries the outbox once more, and reports (and logs, and with ``keep_unsent`` writes) what
  could not be sent.
"""

import collections
import dataclasses
import io
import logging
import queue
import threading
import time
from pathlib import Path

from cxr_tf.inference.dicom_access import describe, parse_allow, refuse_unlisted
from cxr_tf.inference.dicom_exchange import (RADIOGRAPHS, SECONDARY_CAPTURE, chest_problem, header_only,
                                            identity_problem)
from cxr_tf.inference.dicom_outbox import Destination, Outbox, Pending
from cxr_tf.inference.outputs import FORMATS
from cxr_tf.inference.readers import Film, FilmError
from cxr_tf.inference.results import FilmResult, NotProcessed, error_text
from cxr_tf.inference.spool import Spool

__all__ = ["Destination", "DicomNode"]

log = logging.getLogger(__name__)

# C-STORE failure statuses (PS3.4 B.2.3; C000-CFFF "cannot understand").
STATUS_NOT_CHEST = 0xC001
STATUS_UNREADABLE = 0xC002
STATUS_NOT_FRONTAL = 0xC003  # the input gate refused it
STATUS_NO_REPORT = 0xC004  # not even a "not processed" report could be built (in-memory mode)
STATUS_RETRY_LATER = 0xA700  # "out of resources": shutting down, a full disk, no report in time


@dataclasses.dataclass
class Received:
    """A film accepted: arrival, SOP Instance UID, the film as read (None: read back from the spool),
    spool key, whether its report is out (a resumed film), the event its handler waits on (in memory)."""

    received: float
    sop_uid: str
    film: object
    key: str | None = None
    reported: bool = False
    answered: threading.Event | None = None
    has_report: bool = False


@dataclasses.dataclass(frozen=True)
class Refused:
    """A refused film that gets a "not processed" report: its header (no pixels), why, the gate's record."""

    received: float
    sop_uid: str
    header: object
    not_processed: object
    gate: dict | None = None


class DicomNode:
    """The node: ``DicomNode(predictor, ...).start()``, later ``stop()``.

    predictor: a loaded ``Predictor``; aet/host/port: where it listens; destination: a
    ``Destination``; spool: a folder for the durable inbox and outbox (None: in memory, each film
    acknowledged once its report exists); allow: ``parse_allow`` entries (empty: any caller);
    max_associations: how many associations at once (more are rejected, transient "local limit
    exceeded"); fhir_out: a folder for ``<SOPInstanceUID>.fhir.json`` (None: no FHIR); heatmaps:
    also send Grad-CAM maps of positive findings, as ``heatmap_format`` ("heatmap-pm": Parametric
    Maps; "heatmap-sc": Secondary Captures for legacy viewers); keep_unsent: a folder where
    ``stop()`` writes what could not be sent (None: only logged and reported). ``stats``: counters;
    ``latencies``: seconds from a film's arrival to its SR's successful C-STORE, one per film."""

    def __init__(self, predictor, aet="CXR_TF", host="127.0.0.1", port=11112, destination=None,
                 fhir_out=None, heatmaps=False, keep_unsent=None, retry_initial=1.0, retry_max=60.0,
                 max_batch=16, timeout=30.0, heatmap_format="heatmap-pm", spool=None, allow=(),
                 max_associations=10):
        if destination is None:
            raise ValueError("a destination AET@HOST:PORT is required: where the SRs go")
        if int(max_associations) < 1:
            raise ValueError(f"max_associations={max_associations}: expected 1 or more")
        self.predictor = predictor
        self.aet, self.host, self.port = aet, host, int(port)
        self.destination = destination
        self.allow, self.max_associations = parse_allow(allow), int(max_associations)
        self.fhir_out = Path(fhir_out) if fhir_out else None
        self.heatmaps = heatmaps
        if heatmap_format not in ("heatmap-pm", "heatmap-sc"):
            raise ValueError(f"heatmap_format={heatmap_format!r}: expected heatmap-pm (Parametric Maps) or heatmap-sc "
                             "(Secondary Captures, for viewers without Parametric Map support)")
        self.heatmap_format = heatmap_format
        self._reported = collections.OrderedDict()  # SOP Instance UIDs given a "not processed" report
        self.keep_unsent = Path(keep_unsent) if keep_unsent else None
        self.retry_initial, self.retry_max = float(retry_initial), float(retry_max)
        self.max_batch, self.timeout = int(max_batch), float(timeout)
        self.stats = collections.Counter()
        self.latencies = []
        self.refusals = []  # [(SOP Instance UID, reason)]
        self.spool = Spool(spool) if spool else None
        self.outbox = Outbox(aet, destination, self.timeout, self.retry_initial, self.retry_max, self.spool,
                             self.stats, self.latencies)
        self._queue = queue.Queue()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._server = None
        self._worker = None
        # every format the node will make, checked now: a missing extra is one line at start
        for name in ("dicom-sr", *((heatmap_format,) if heatmaps else ()), *(("fhir",) if fhir_out else ())):
            FORMATS[name].check()

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        """Resume what the spool holds, listen (non-blocking) and start the worker; returns self."""
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts, build_context

        if self.fhir_out:
            self.fhir_out.mkdir(parents=True, exist_ok=True)
        if self.spool:
            self._resume()
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = 0  # no limit: films are large
        ae.maximum_associations = self.max_associations
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
        contexts = [build_context(c.abstract_syntax) for c in AllStoragePresentationContexts]
        ae.supported_contexts = contexts + [build_context("1.2.840.10008.1.1")]  # + Verification
        self._worker = threading.Thread(target=self._work, name="cxr_tf-node-worker", daemon=True)
        self._worker.start()
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                     (evt.EVT_REQUESTED, self._on_request)])
        log.info("listening as %s on %s:%d; results to %s; %s; %s", self.aet, self.host, self.port, self.destination,
                 f"spool {self.spool.folder}" if self.spool else "no spool (in memory)", describe(self.allow))
        return self

    def _resume(self):
        """Queue the films and results a previous run left in the spool (module doc)."""
        import pydicom

        for folder, stage, sop_uid, paths in self.spool.outbox():
            objects = [pydicom.dcmread(path) for path in paths]
            self.outbox.add(Pending(sop_uid, objects, time.monotonic(), is_report=stage == "report", paths=paths))
        films = self.spool.films()
        for key, path, reported in films:
            try:
                sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)
            except Exception:  # noqa: BLE001 - the worker reports what is wrong with it
                sop_uid = f"(spooled film {key})"
            self._queue.put(Received(time.monotonic(), sop_uid, None, key=key, reported=reported))
        if films or len(self.outbox):
            log.info("resuming from spool %s: %d film(s) to triage, %d result(s) to send", self.spool.folder,
                     len(films), len(self.outbox))

    def stop(self, drain_timeout=None):
        """Stop accepting, finish the queued films, try the outbox once more (until
        ``drain_timeout`` seconds, default ``retry_max``), then report.

        Returns {"triaged", "sent", "refused", "failed" (accepted films that got no report at
        all; each logged with its UID), "unsent": [SOP Instance UIDs of films whose results were
        not delivered]}; each unsent film is logged (and written under ``keep_unsent`` when
        given; with a spool it stays there for the next start)."""
        if self._server is not None:
            self._server.shutdown()  # no new associations; running ones end
            self._server = None
        self._stopping.set()
        if self._worker is not None:
            self._worker.join()
        deadline = time.monotonic() + (self.retry_max if drain_timeout is None else drain_timeout)
        unsent = self.outbox.drain(deadline, self.keep_unsent)
        report = {"triaged": self.stats["triaged"], "sent": self.stats["films_sent"],
                  "refused": self.stats["refused"], "failed": self.stats["failed"], "unsent": unsent}
        log.info("stopped: %s", report)
        return report

    def wait_idle(self, timeout=60.0):
        """Block until the queue and outbox are empty (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue.unfinished_tasks or len(self.outbox):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    # ------------------------------------------------------------------ receiving

    def _on_request(self, event):
        """Association request: a caller not in ``allow`` gets the standard rejection (``dicom_access``)."""
        if refuse_unlisted(event, self.allow):
            self.stats["rejected_associations"] += 1

    def _on_store(self, event):
        """C-STORE handler (association thread): check, read, screen, then keep the film (spool or
        queue); the status says which."""
        sop_uid = "unknown SOP Instance"
        ds = None
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_uid = str(ds.get("SOPInstanceUID", sop_uid))
            if self._stopping.is_set():
                return self._refuse(sop_uid, STATUS_RETRY_LATER, "node is shutting down; send again later")
            problem = chest_problem(ds) or identity_problem(ds)
            if problem:
                return self._refuse(sop_uid, STATUS_NOT_CHEST, problem, ds, "not_chest_radiograph")
            encoded = event.encoded_dataset()
            film = self.predictor.read(encoded, name=f"SOP Instance {sop_uid}")
            [screening] = self.predictor.screen([film])
            if screening is not None and not screening.passed:
                return self._refuse(sop_uid, STATUS_NOT_FRONTAL, screening.message(), ds, screening.reason,
                                    gate=screening.as_dict())
        except FilmError as err:
            return self._refuse(sop_uid, STATUS_UNREADABLE, str(err), ds, "unreadable")
        except Exception as err:  # noqa: BLE001 - pydicom raises many types while decoding a damaged data set
            return self._refuse(sop_uid, STATUS_UNREADABLE, f"cannot decode the data set ({type(err).__name__}: {err})",
                                ds, "unreadable")
        return self._accept(sop_uid, film, encoded)

    def _accept(self, sop_uid, film, encoded):
        """0x0000 once the film is safe: fsynced in the spool, or (in memory) once its report exists."""
        item = Received(time.monotonic(), sop_uid, film)
        if self.spool:
            try:
                item.key = self.spool.put_film(sop_uid, encoded)
            except OSError as err:  # a full or failing disk: the sender keeps the film and retries
                log.error("could not spool SOP Instance %s: %s", sop_uid, err)
                return self._refuse(sop_uid, STATUS_RETRY_LATER, f"cannot store the film here ({err.strerror})")
            self.stats["received"] += 1
            self._queue.put(item)
            return 0x0000
        item.answered = threading.Event()
        self._queue.put(item)
        if not item.answered.wait(self.timeout):
            return self._refuse(sop_uid, STATUS_RETRY_LATER, f"report not ready within {self.timeout:.0f} s; send again")
        if not item.has_report:
            return self._refuse(sop_uid, STATUS_NO_REPORT, "no report could be built; see the node's log")
        self.stats["received"] += 1
        return 0x0000

    def _refuse(self, sop_uid, status, reason, ds=None, code=None, gate=None):
        """The failure status of a refused film; with ``code`` (a ``results.REASONS`` key) a radiograph
        (CR, DX, SC) whose header places it in a study also gets a "not processed" report, queued
        for the worker (``_not_processed``), once per SOP Instance."""
        from pydicom.dataset import Dataset

        self.stats["refused"] += 1
        self.refusals.append((sop_uid, reason))
        log.warning("refused SOP Instance %s: %s", sop_uid, reason)
        try:
            if code is not None and ds is not None and self._reports_refusal(ds, sop_uid):
                self._queue.put(Refused(time.monotonic(), sop_uid, header_only(ds),
                                        NotProcessed(code, f"SOP Instance {sop_uid}: {reason}"), gate))
        except Exception:  # noqa: BLE001 - a header too damaged to copy gets the status alone
            log.exception("no not-processed report for SOP Instance %s", sop_uid)
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = reason[:64]  # LO: 64 characters
        return answer

    def _reports_refusal(self, ds, sop_uid):
        """Whether a refused film gets a "not processed" report: an image of the classes the node
        reads (CR, DX, SC: a CT or an MR sent by a broad routing rule gets only the status) whose
        header names its study, not reported already (a sender may retry a refused film)."""
        if str(ds.get("SOPClassUID", "")) not in (*RADIOGRAPHS, SECONDARY_CAPTURE) or identity_problem(ds):
            return False
        with self._idle:
            if sop_uid in self._reported:
                return False
            self._reported[sop_uid] = True
            while len(self._reported) > 100_000:
                self._reported.popitem(last=False)
        return True

    # ------------------------------------------------------------------ working

    def _work(self):
        while True:
            try:
                first = self._queue.get(timeout=self._wait_time())
            except queue.Empty:
                if self._stopping.is_set():
                    return
                self.outbox.send_due()
                self._notify()
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for item in (i for i in batch if isinstance(i, Refused)):
                    self._guarded(item.sop_uid, "the not-processed report", self._not_processed, item)
                films = [item for item in batch if isinstance(item, Received)]
                if films:
                    self._triage(films)
            finally:
                for _ in batch:
                    self._queue.task_done()
            self.outbox.send_due()
            self._notify()

    def _wait_time(self):
        if not len(self.outbox):
            return 0.2
        return max(0.01, min(0.2, self.outbox.next_try() - time.monotonic()))

    def _notify(self):
        with self._idle:
            self._idle.notify_all()

    def _triage(self, batch):
        """MC run over the batch; every film's report goes out first, then the heatmaps (Grad-CAM
        costs more than the SR, and the SR is what the worklist needs); then the film leaves the
        spool. Every film gets a report: its triage, or "not processed" with the reason."""
        results = self._predict(batch)
        for item, result in zip(batch, results):
            if not item.reported:
                self._answer(item, result)
        self.outbox.send_due()
        for item, result in zip(batch, results):
            if self.heatmaps and result.ok and result.findings:
                self._guarded(item.sop_uid, "heatmaps", self._heatmaps, item, result)
            if self.spool and (item.reported or item.has_report):
                self.spool.film_done(item.key)

    def _predict(self, batch):
        """[FilmResult] of the batch, one per film whatever happens: a film that cannot be read back
        from the spool, or a batch the model fails on, gets a "not processed" result."""
        films = [item.film if item.film is not None else self._load(item) for item in batch]
        ready = [(item, film) for item, film in zip(batch, films) if not isinstance(film, FilmResult)]
        try:
            triaged = iter(self.predictor.predict([(f"SOP Instance {i.sop_uid}", f) for i, f in ready]))
        except Exception as err:  # noqa: BLE001 - the model's failure is each film's answer, never silence
            log.exception("triage failed for SOP Instance(s) %s", [item.sop_uid for item, _ in ready])
            triaged = iter(FilmResult(f"SOP Instance {i.sop_uid}", film=f, not_processed=NotProcessed(
                "analysis_failed", error_text(f"SOP Instance {i.sop_uid}", err))) for i, f in ready)
        return [film if isinstance(film, FilmResult) else next(triaged) for film in films]

    def _load(self, item):
        """A resumed film read back from the spool: a ``Film``, or the "not processed" FilmResult
        of one that no longer reads (its header from the file, for the report)."""
        import pydicom

        name = f"SOP Instance {item.sop_uid}"
        data = self.spool.film_path(item.key).read_bytes()
        try:
            return self.predictor.read(data, name=name)
        except Exception as err:  # noqa: BLE001 - FilmError or a damaged file: its answer, not a crash
            try:
                header = header_only(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True))
            except Exception:  # noqa: BLE001 - without a header there is no study to answer in
                header = None
            return FilmResult(name, film=Film(item.sop_uid, None, "dicom", header=header),
                              not_processed=NotProcessed("unreadable", error_text(name, err)))

    def _answer(self, item, result):
        """The film's report (its triage, or "not processed") and FHIR Bundle into the outbox; a film
        for which not even that can be built is logged (and in a spool moved to ``failed/``)."""
        try:
            objects = [output.value for output in FORMATS["dicom-sr"].write(result, self.predictor)]
        except Exception:  # noqa: BLE001 - logged below with the film's UID
            log.exception("no report could be built for SOP Instance %s", item.sop_uid)
            objects = []
        if objects:
            self._put(item, "report", objects, is_report=True)
            item.has_report = True
            if result.ok:
                self.stats["triaged"] += 1
                log.info("triaged SOP Instance %s: %s (%s)", item.sop_uid, result.verdict["triage"]["level"],
                         result.verdict["message"])
            else:
                self.stats["not_processed_reports"] += 1
                log.warning("SOP Instance %s not processed: %s", item.sop_uid, result.error)
            if self.fhir_out:
                self._guarded(item.sop_uid, "the FHIR Bundle", self._fhir, item, result)
        else:
            self.stats["failed"] += 1
            if self.spool:
                log.error("SOP Instance %s got no report at all; its film is kept in %s", item.sop_uid,
                          self.spool.film_failed(item.key))
        if item.answered is not None:
            item.answered.set()

    def _put(self, item, stage, objects, is_report=False):
        paths = self.spool.put_objects(item.key, stage, item.sop_uid, objects) if self.spool else None
        if is_report and self.spool:
            self.spool.mark_reported(item.key)
        self.outbox.add(Pending(item.sop_uid, objects, item.received, is_report=is_report, paths=paths))

    def _guarded(self, sop_uid, what, step, *args):
        """Run one film's optional step (heatmaps, FHIR, a refused film's report); True when it
        worked. Its failure costs no film its report, and is logged with the film's UID."""
        try:
            step(*args)
            return True
        except Exception:  # noqa: BLE001 - logged with the film's UID
            self.stats[f"{what.split()[-1].lower()}_failed"] += 1
            log.exception("could not build %s of SOP Instance %s", what, sop_uid)
            return False

    def _fhir(self, item, result):
        for output in FORMATS["fhir"].write(result, self.predictor):
            (self.fhir_out / f"{item.sop_uid}{output.suffix}").write_bytes(output.encode())

    def _heatmaps(self, item, result):
        """Grad-CAM maps of the film's positive findings (``heatmap_format``) into the outbox."""
        objects = [output.value for output in FORMATS[self.heatmap_format].write(result, self.predictor)]
        if objects:
            self._put(item, "maps", objects)

    def _not_processed(self, item):
        """The "received, not analysed" report of a refused film (and its FHIR Bundle) into the outbox
        (in memory, not spooled: the sender was told the film was refused)."""
        result = FilmResult(f"SOP Instance {item.sop_uid}", film=Film(item.sop_uid, None, "dicom", header=item.header),
                            not_processed=item.not_processed, gate=item.gate)
        objects = [output.value for output in FORMATS["dicom-sr"].write(result, self.predictor)]
        if self.fhir_out:
            self._fhir(item, result)
        self.stats["not_processed_reports"] += 1
        self.outbox.add(Pending(item.sop_uid, objects, item.received))
