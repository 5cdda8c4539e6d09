"""The DICOM node's outbox: the objects (SRs, maps) of each film waiting for the destination, sent
by C-STORE in one association per round, retried with exponential back-off while the destination
is down or refuses (``dicom_exchange.retry_later``); nothing is dropped. With a spool
(``cxr_tf.inference.spool``) each object is also a file there, removed once the destination has
confirmed storing it, so a restart sends what is left (and an object sent twice, its UID being
derived from the film and the model, replaces itself)."""

import dataclasses
import logging
import time

from cxr_tf.inference.dicom_exchange import keep_unsent, retry_later

log = logging.getLogger(__name__)

DELIVERED = (0x0000, 0xB000, 0xB006, 0xB007)
"""C-STORE statuses that mean stored: success, and the warnings (coercion, elements discarded)."""


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


@dataclasses.dataclass
class Pending:
    """Objects of one film waiting to be sent (``paths``: their spool files, when spooled)."""

    sop_uid: str
    objects: list
    received: float
    is_report: bool = False  # the SR (counted as the film's delivery) or its heatmaps
    paths: list | None = None
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""


class Outbox:
    """``Outbox(aet, destination, ...)``: ``add`` Pending entries, ``send_due`` in the worker thread.

    stats: the node's counters (``objects_sent``, ``films_sent``, ``send_failures``); latencies:
    seconds from a film's arrival to its SR's successful C-STORE, appended per film."""

    def __init__(self, aet, destination, timeout, retry_initial, retry_max, spool, stats, latencies):
        self.aet, self.destination, self.timeout = aet, destination, timeout
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.spool, self.stats, self.latencies = spool, stats, latencies
        self.pending = []

    def __len__(self):
        return len(self.pending)

    def __iter__(self):
        return iter(self.pending)

    def add(self, pending):
        self.pending.append(pending)

    def next_try(self):
        return min(p.next_try for p in self.pending)

    def send_due(self, force=False):
        """Send every entry whose retry time has come, in one association."""
        now = time.monotonic()
        due = [p for p in self.pending if force or p.next_try <= now]
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
                    self.pending.remove(pending)
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
            if code not in DELIVERED:
                return f"{self.destination} answered 0x{code:04X} for {obj.SOPInstanceUID}"
            pending.objects.pop(0)
            if pending.paths:
                self.spool.sent(pending.paths.pop(0))
            self.stats["objects_sent"] += 1
        return ""

    def _failed(self, pending, error):
        delay = retry_later(pending, error, self.retry_initial, self.retry_max)
        self.stats["send_failures"] += 1
        log.warning("could not send results of SOP Instance %s (attempt %d): %s; retrying in %.1f s",
                    pending.sop_uid, pending.attempts, error, delay)

    def drain(self, deadline, keep_unsent_dir):
        """At stop: try until ``deadline`` (monotonic), then log (and write under ``keep_unsent_dir``)
        what is left; returns the SOP Instance UIDs of the films whose results were not delivered."""
        while self.pending and time.monotonic() < deadline:
            self.send_due(force=True)
            if self.pending:
                time.sleep(min(self.retry_initial, max(0.0, deadline - time.monotonic())))
        where = ("; they stay in the spool and are sent at the next start" if self.spool else
                 "" if keep_unsent_dir else "; rerun with --keep-unsent DIR to keep them")
        for pending in self.pending:
            log.error("NOT SENT: results of SOP Instance %s (%d object(s)) to %s after %d attempt(s): %s%s",
                      pending.sop_uid, len(pending.objects), self.destination, pending.attempts, pending.error, where)
            if keep_unsent_dir:
                folder = keep_unsent(pending, keep_unsent_dir)
                log.error("kept %d unsent object(s) of SOP Instance %s in %s", len(pending.objects), pending.sop_uid,
                          folder)
        return sorted({p.sop_uid for p in self.pending})
