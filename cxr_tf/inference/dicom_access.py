"""Who may send films to the DICOM node: ``--allow AET[@HOST]`` entries (``parse_allow``) and the
association-request check (``refuse_unlisted``) that answers any other caller with the standard
rejection, A-ASSOCIATE-RJ "rejected-permanent, service user, calling AE title not recognised"
(PS3.8 9.3.4). An empty list allows any caller (the default; the docs say to set it)."""

import logging

log = logging.getLogger(__name__)


def parse_allow(entries):
    """[(AE title, host or None)] of ``--allow AET[@HOST]`` entries; ValueError naming a bad one."""
    allowed = []
    for entry in entries or ():
        aet, _, host = str(entry).partition("@")
        if not aet.strip() or len(aet) > 16 or "\\" in aet:
            raise ValueError(f"--allow {entry!r}: expected an AE title of 1-16 characters, optionally @HOST")
        allowed.append((aet.strip(), host.strip() or None))
    return allowed


def describe(allowed):
    return "callers: " + ", ".join(a + (f"@{h}" if h else "") for a, h in allowed) if allowed else "any caller"


def refuse_unlisted(event, allowed):
    """EVT_REQUESTED handler body: reject the association unless its calling AE title (and, when the
    entry names one, its host address) is in ``allowed``. Returns True when it rejected."""
    if not allowed:
        return False
    requestor = event.assoc.requestor
    calling = str(requestor.primitive.calling_ae_title).strip()
    address = requestor.address
    if any(calling == aet and (host is None or host == address) for aet, host in allowed):
        return False
    log.warning("rejected an association from AE %s at %s: not in --allow", calling, address)
    event.assoc.acse.send_reject(0x01, 0x01, 0x03)
    event.assoc.kill()  # as pynetdicom's own rejection: the PDU leaves before the socket closes
    return True
