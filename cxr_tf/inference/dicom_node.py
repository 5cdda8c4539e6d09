"""A DICOM node that triages chest radiographs as they arrive and answers with a TID 1500
Structured Report (and Grad-CAM Parametric Maps, or Secondary Captures for legacy viewers) sent
to a destination AE.

Flow (``docs/integration.md``)::

    modality / PACS --C-STORE--> [Storage SCP: check, read]  --queue-->  [worker: triage,
    SR, heatmaps, FHIR]  --C-STORE-->  destination (PACS)

- The SCP (pynetdicom) accepts every storage SOP class so that it can *answer* what
  it will not triage: a film that is not a chest radiograph (see ``chest_problem``)
  or that cannot be read (``cxr_tf.inference.readers`` raises ``FilmError``) or that the
  input gate refuses (``cxr_tf.inference.gate``: not a frontal chest film; after the header
  checks) gets a failure status (0xC000 family) with an Error Comment, and a log line naming
  its SOP Instance UID and the reason; a refused CR, DX or SC image whose header names its study
  also gets a "received, not analysed" report in that study (``dicom-sr`` of a ``NotProcessed``
  result; with ``fhir_out`` a cancelled DiagnosticReport too), once per SOP Instance. Everything
  else gets 0x0000 once it is read and queued: the film is then the node's responsibility.
- One worker thread runs the model (loaded once) on whatever has queued up (one MC
  run per batch of up to ``max_batch`` films), builds the SR (+ heatmaps) and sends
  them. Films are processed in memory; only ``fhir_out`` and ``keep_unsent`` (both
  asked for by the user) write files.
- A destination that is down or refuses is retried with exponential back-off
  (``retry_initial`` doubling up to ``retry_max`` seconds); nothing is dropped.
  ``stop()`` stops accepting, finishes the queue, tries the outbox once more, and
  reports (and logs, and with ``keep_unsent`` writes) what could not be sent.
"""

import collections
import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path

from cxr_tf.inference.dicom_exchange import (RADIOGRAPHS, SECONDARY_CAPTURE, chest_problem, header_only,
                                            identity_problem, keep_unsent, retry_later)
from cxr_tf.inference.outputs import FORMATS
from cxr_tf.inference.readers import Film, FilmError
from cxr_tf.inference.results import FilmResult, NotProcessed

log = logging.getLogger(__name__)

# C-STORE failure statuses (PS3.4 B.2.3; C000-CFFF "cannot understand").
STATUS_NOT_CHEST = 0xC001
STATUS_UNREADABLE = 0xC002
STATUS_NOT_FRONTAL = 0xC003  # the input gate refused it
STATUS_SHUTTING_DOWN = 0xA700  # "out of resources": the sender retries later


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where results go: AE title, host, port."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text):
        """``AET@HOST:PORT`` -> Destination; ValueError naming the expected form."""
        try:
            aet, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            port = int(port)
        except ValueError:
            raise ValueError(f"destination {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242") from None
        if not aet or len(aet) > 16 or not host or not 0 < port < 65536:
            raise ValueError(f"destination {text!r}: AE title 1-16 characters, a host and a port 1-65535")
        return cls(aet, host, port)

    def __str__(self):
        return f"{self.aet}@{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Received:
    """A film the node acknowledged: when it arrived, its SOP Instance UID, the film as read."""

    received: float
    sop_uid: str
    film: object


@dataclasses.dataclass(frozen=True)
class Refused:
    """A refused film that gets a "not processed" report: its header (no pixels), why, the gate's record."""

    received: float
    sop_uid: str
    header: object
    not_processed: object
    gate: dict | None = None


@dataclasses.dataclass
class Pending:
    """Objects of one film waiting to be sent."""

    sop_uid: str
    objects: list
    received: float
    is_report: bool = False  # the SR (counted as the film's delivery) or its heatmaps
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""


class DicomNode:
    """The node: ``DicomNode(predictor, ...).start()``, later ``stop()``.

    predictor: a loaded ``Predictor``; aet/host/port: where it listens; destination:
    a ``Destination``; fhir_out: a folder for ``<SOPInstanceUID>.fhir.json`` (None: no
    FHIR); heatmaps: also send Grad-CAM maps of positive findings, as ``heatmap_format``
    ("heatmap-pm": Parametric Maps; "heatmap-sc": Secondary Captures for legacy viewers);
    keep_unsent: a folder where ``stop()`` writes what could not be sent (None: only
    logged and reported). ``stats``: counters; ``latencies``: seconds from a film's
    arrival to its SR's successful C-STORE, one per film. A batch's SRs are sent before
    its heatmaps are computed.
    """

    def __init__(self, predictor, aet="CXR_TF", host="127.0.0.1", port=11112, destination=None,
                 fhir_out=None, heatmaps=False, keep_unsent=None, retry_initial=1.0, retry_max=60.0,
                 max_batch=16, timeout=30.0, heatmap_format="heatmap-pm"):
        if destination is None:
            raise ValueError("a destination AET@HOST:PORT is required: where the SRs go")
        self.predictor = predictor
        self.aet, self.host, self.port = aet, host, int(port)
        self.destination = destination
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
        self.outbox = []  # [Pending]
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
        """Listen (non-blocking) and start the worker; returns self."""
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts, build_context

        if self.fhir_out:
            self.fhir_out.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = 0  # no limit: films are large
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
        contexts = [build_context(c.abstract_syntax) for c in AllStoragePresentationContexts]
        ae.supported_contexts = contexts + [build_context("1.2.840.10008.1.1")]  # + Verification
        self._worker = threading.Thread(target=self._work, name="cxr_tf-node-worker", daemon=True)
        self._worker.start()
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        log.info("listening as %s on %s:%d; results to %s", self.aet, self.host, self.port, self.destination)
        return self

    def stop(self, drain_timeout=None):
        """Stop accepting, finish the queued films, try the outbox once more (until
        ``drain_timeout`` seconds, default ``retry_max``), then report.

        Returns {"triaged", "sent", "refused", "failed" (accepted films whose results could
        not be built; each logged with its UID), "unsent": [SOP Instance UIDs of films whose
        results were not delivered]}; each unsent film is logged (and written under
        ``keep_unsent`` when given)."""
        if self._server is not None:
            self._server.shutdown()  # no new associations; running ones end
            self._server = None
        self._stopping.set()
        if self._worker is not None:
            self._worker.join()
        deadline = time.monotonic() + (self.retry_max if drain_timeout is None else drain_timeout)
        while self.outbox and time.monotonic() < deadline:
            self._send_due(force=True)
            if self.outbox:
                time.sleep(min(self.retry_initial, max(0.0, deadline - time.monotonic())))
        unsent = sorted({p.sop_uid for p in self.outbox})
        for pending in self.outbox:
            log.error("NOT SENT: results of SOP Instance %s (%d object(s)) to %s after %d attempt(s): %s%s",
                      pending.sop_uid, len(pending.objects), self.destination, pending.attempts, pending.error,
                      "" if self.keep_unsent else "; rerun with --keep-unsent DIR to keep them")
            if self.keep_unsent:
                self._write_unsent(pending)
        report = {"triaged": self.stats["triaged"], "sent": self.stats["films_sent"],
                  "refused": self.stats["refused"], "failed": self.stats["failed"], "unsent": unsent}
        log.info("stopped: %s", report)
        return report

    def wait_idle(self, timeout=60.0):
        """Block until the queue and outbox are empty (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue.unfinished_tasks or self.outbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.2))
        return True

    # ------------------------------------------------------------------ receiving

    def _on_store(self, event):
        """C-STORE handler (association thread): check, read, queue; the status says which."""
        sop_uid = "unknown SOP Instance"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_uid = str(ds.get("SOPInstanceUID", sop_uid))
            if self._stopping.is_set():
                return self._refuse(sop_uid, STATUS_SHUTTING_DOWN, "node is shutting down; send again later")
            problem = chest_problem(ds) or identity_problem(ds)
            if problem:
                return self._refuse(sop_uid, STATUS_NOT_CHEST, problem, ds, "not_chest_radiograph")
            film = self.predictor.read(event.encoded_dataset(), name=f"SOP Instance {sop_uid}")
            [screening] = self.predictor.screen([film])
            if screening is not None and not screening.passed:
                return self._refuse(sop_uid, STATUS_NOT_FRONTAL, screening.message(), ds, screening.reason,
                                    gate=screening.as_dict())
        except FilmError as err:
            return self._refuse(sop_uid, STATUS_UNREADABLE, str(err), ds, "unreadable")
        except Exception as err:  # noqa: BLE001 - pydicom raises many types while decoding a damaged data set
            return self._refuse(sop_uid, STATUS_UNREADABLE, f"cannot decode the data set ({type(err).__name__}: {err})",
                                ds, "unreadable")
        self.stats["received"] += 1
        self._queue.put(Received(time.monotonic(), sop_uid, film))
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

    # ------------------------------------------------------------------ working

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

    def _work(self):
        while True:
            try:
                first = self._queue.get(timeout=self._wait_time())
            except queue.Empty:
                if self._stopping.is_set():
                    return
                self._send_due()
                self._notify()
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            refused = [item for item in batch if isinstance(item, Refused)]
            batch = [item for item in batch if not isinstance(item, Refused)]
            for item in refused:
                self._guarded(item.sop_uid, "the not-processed report", self._not_processed, item)
                self._queue.task_done()
            if not batch:
                self._send_due()
                self._notify()
                continue
            try:
                self._triage(batch)
            except Exception:
                log.exception("triage failed for SOP Instance(s) %s", [item.sop_uid for item in batch])
                self.stats["failed"] += len(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            self._send_due()
            self._notify()

    def _wait_time(self):
        if not self.outbox:
            return 0.2
        return max(0.01, min(0.2, min(p.next_try for p in self.outbox) - time.monotonic()))

    def _notify(self):
        with self._idle:
            self._idle.notify_all()

    def _triage(self, batch):
        """MC run over the batch; every film's SR goes out first, then the heatmaps
        (Grad-CAM costs more than the SR, and the SR is what the worklist needs)."""
        results = self.predictor.predict([(item.sop_uid, item.film) for item in batch])
        done = []
        for item, result in zip(batch, results):
            if self._guarded(item.sop_uid, "the SR", self._report, item, result):
                done.append((item, result))
        self._send_due()
        for item, result in done:
            if self.heatmaps and result.findings:
                self._guarded(item.sop_uid, "heatmaps", self._heatmaps, item, result)

    def _guarded(self, sop_uid, what, step, *args):
        """Run one film's step; True when it worked. One film's failure costs no other
        film its result, and is logged with the film's UID."""
        try:
            step(*args)
            return True
        except Exception:
            self.stats["failed" if what == "the SR" else "heatmaps_failed" if what == "heatmaps" else
                       "not_processed_failed"] += 1
            log.exception("could not build %s of SOP Instance %s", what, sop_uid)
            return False

    def _report(self, item, result):
        """The film's SR (and FHIR Bundle) into the outbox (``cxr_tf.inference.outputs``)."""
        if result.error is not None:
            raise ValueError(result.error)
        [sr] = [output.value for output in FORMATS["dicom-sr"].write(result, self.predictor)]
        if self.fhir_out:
            for output in FORMATS["fhir"].write(result, self.predictor):
                (self.fhir_out / f"{item.sop_uid}{output.suffix}").write_bytes(output.encode())
        self.stats["triaged"] += 1
        log.info("triaged SOP Instance %s: %s (%s)", item.sop_uid, result.verdict["triage"]["level"],
                 result.verdict["message"])
        self.outbox.append(Pending(item.sop_uid, [sr], item.received, is_report=True))

    def _heatmaps(self, item, result):
        """Grad-CAM maps of the film's positive findings (``heatmap_format``) into the outbox."""
        objects = [output.value for output in FORMATS[self.heatmap_format].write(result, self.predictor)]
        self.outbox.append(Pending(item.sop_uid, objects, item.received))

    def _not_processed(self, item):
        """The "received, not analysed" report of a refused film (and its FHIR Bundle) into the outbox:
        the same registry entry as every front end (``dicom-sr`` renders ``NotProcessed``)."""
        result = FilmResult(f"SOP Instance {item.sop_uid}", film=Film(item.sop_uid, None, "dicom", header=item.header),
                            not_processed=item.not_processed, gate=item.gate)
        objects = [output.value for output in FORMATS["dicom-sr"].write(result, self.predictor)]
        if self.fhir_out:
            for output in FORMATS["fhir"].write(result, self.predictor):
                (self.fhir_out / f"{item.sop_uid}{output.suffix}").write_bytes(output.encode())
        self.stats["not_processed_reports"] += 1
        self.outbox.append(Pending(item.sop_uid, objects, item.received))

    # ------------------------------------------------------------------ sending

    def _send_due(self, force=False):
        """Send every outbox entry whose retry time has come, in one association."""
        now = time.monotonic()
        due = [p for p in self.outbox if force or p.next_try <= now]
        if not due:
            return
        try:
            assoc = self._associate(due)
        except ConnectionError as err:
            for pending in due:
                self._failed(pending, str(err))
            return
        try:
            for pending in due:
                error = self._store(assoc, pending)
                if error:
                    self._failed(pending, error)
                else:
                    self.outbox.remove(pending)
                    if pending.is_report:
                        self.stats["films_sent"] += 1
                        self.latencies.append(time.monotonic() - pending.received)
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, due):
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.maximum_pdu_size = 0
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
        syntaxes = sorted({str(o.file_meta.TransferSyntaxUID) for p in due for o in p.objects})
        for sop_class in sorted({str(o.SOPClassUID) for p in due for o in p.objects}):
            ae.add_requested_context(sop_class, syntaxes)
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.aet)
        if not assoc.is_established:
            raise ConnectionError(f"no association with {self.destination} (down, or it rejected {self.aet})")
        return assoc

    def _store(self, assoc, pending):
        """Send the objects of one film not yet sent; '' on success, else the error."""
        while pending.objects:
            obj = pending.objects[0]
            try:
                status = assoc.send_c_store(obj)
            except (RuntimeError, ValueError) as err:
                return f"C-STORE of {obj.SOPInstanceUID} failed: {err}"
            code = getattr(status, "Status", None)
            if code is None:
                return f"no C-STORE response for {obj.SOPInstanceUID} (association lost)"
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or warnings (stored)
                return f"{self.destination} answered 0x{code:04X} for {obj.SOPInstanceUID}"
            pending.objects.pop(0)
            self.stats["objects_sent"] += 1
        return ""

    def _failed(self, pending, error):
        delay = retry_later(pending, error, self.retry_initial, self.retry_max)
        self.stats["send_failures"] += 1
        log.warning("could not send results of SOP Instance %s (attempt %d): %s; retrying in %.1f s",
                    pending.sop_uid, pending.attempts, error, delay)

    def _write_unsent(self, pending):
        folder = keep_unsent(pending, self.keep_unsent)
        log.error("kept %d unsent object(s) of SOP Instance %s in %s", len(pending.objects), pending.sop_uid, folder)
