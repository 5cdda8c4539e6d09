"""The DICOM node's durable inbox and outbox: a folder the admin chooses (``--spool DIR``) where
films wait for their triage and results wait for the destination, so that a crash (``kill -9``,
power loss) loses nothing the node has acknowledged. Patient data at rest: folders are created
mode 0700 and files 0600; each file is removed once its work is done (a film once its results are
in the outbox, a result once the destination confirmed storing it)::

    SPOOL/inbox/<key>.dcm        a film as received (Part 10); fsynced before the node answers 0x0000
    SPOOL/inbox/<key>.reported   marker: the film's report is in the outbox (only heatmaps remain)
    SPOOL/outbox/<key>.<stage>/  the objects of one film and stage ("report", "maps") to send, one
                                 Part 10 file each, and ``film-uid`` (the film's SOP Instance UID);
                                 the folder appears complete (written aside, then renamed)
    SPOOL/failed/<key>.dcm       a film for which not even a "not processed" report could be built
    SPOOL/tmp/                   writes in progress (emptied at start)

``key`` is a digest of the film's SOP Instance UID: a film sent again after a crash overwrites its
own entry, never adds one. Every write is write-aside, fsync, rename, fsync of the folder.
"""

import hashlib
import os
import shutil
import uuid
from pathlib import Path


def film_key(sop_uid):
    """The spool name of the film with this SOP Instance UID (any text: it names no file directly)."""
    return hashlib.sha256(str(sop_uid).encode()).hexdigest()[:32]


class Spool:
    """``Spool(folder)``: create (0700) or reopen the spool; ``films()`` and ``outbox()`` list what
    a previous run left, oldest first."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.inbox, self.outbox_dir = self.folder / "inbox", self.folder / "outbox"
        self.failed_dir, self.tmp = self.folder / "failed", self.folder / "tmp"
        for path in (self.folder, self.inbox, self.outbox_dir, self.failed_dir, self.tmp):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)  # an existing folder too: it holds patient data
        shutil.rmtree(self.tmp)
        self.tmp.mkdir(mode=0o700)

    # ------------------------------------------------------------------ films

    def put_film(self, sop_uid, data):
        """Store a received film's Part 10 bytes durably; returns its key."""
        key = film_key(sop_uid)
        self._write(self.inbox / f"{key}.dcm", data)
        return key

    def film_path(self, key):
        return self.inbox / f"{key}.dcm"

    def films(self):
        """[(key, path, reported)] of the films waiting in the inbox, oldest first."""
        paths = sorted(self.inbox.glob("*.dcm"), key=lambda p: p.stat().st_mtime_ns)
        return [(p.stem, p, self.reported(p.stem)) for p in paths]

    def reported(self, key):
        """Whether the film's report reached the outbox (its marker, or the outbox entry itself)."""
        return (self.inbox / f"{key}.reported").exists() or (self.outbox_dir / f"{key}.report").exists()

    def mark_reported(self, key):
        self._write(self.inbox / f"{key}.reported", b"")

    def film_done(self, key):
        """The film's work is done (its results are in the outbox): remove it and its marker."""
        for path in (self.inbox / f"{key}.dcm", self.inbox / f"{key}.reported"):
            path.unlink(missing_ok=True)
        _fsync_dir(self.inbox)

    def film_failed(self, key):
        """Move a film that could not be answered at all to ``failed/`` (kept for the admin)."""
        path = self.inbox / f"{key}.dcm"
        if path.exists():
            os.replace(path, self.failed_dir / path.name)
        self.film_done(key)
        return self.failed_dir / path.name

    # ------------------------------------------------------------------ results

    def put_objects(self, key, stage, sop_uid, objects):
        """Store one stage's objects (pydicom Datasets) of a film durably; returns [path] in order."""
        aside = self.tmp / f"{key}.{stage}.{uuid.uuid4().hex}"
        aside.mkdir(mode=0o700)
        names = []
        for number, obj in enumerate(objects):
            name = f"{number:03d}.dcm"
            with _private_file(aside / name) as handle:
                obj.save_as(handle, enforce_file_format=True)
                handle.flush()
                os.fsync(handle.fileno())
            names.append(name)
        self._write(aside / "film-uid", str(sop_uid).encode(), fsync_dir=False)
        _fsync_dir(aside)
        target = self.outbox_dir / f"{key}.{stage}"
        if target.exists():  # the same stage written before a crash: this one replaces it
            shutil.rmtree(target)
        os.replace(aside, target)
        _fsync_dir(self.outbox_dir)
        return [target / name for name in names]

    def outbox(self):
        """[(folder, stage, film SOP Instance UID, [object path])] left to send, oldest first."""
        out = []
        for folder in sorted(self.outbox_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            stage = folder.suffix[1:]
            uid_file = folder / "film-uid"
            sop_uid = uid_file.read_text() if uid_file.exists() else folder.stem
            out.append((folder, stage, sop_uid, sorted(folder.glob("*.dcm"))))
        return out

    def sent(self, path):
        """The destination confirmed ``path``: remove it, and its folder once empty."""
        path = Path(path)
        path.unlink(missing_ok=True)
        if not any(path.parent.glob("*.dcm")):
            shutil.rmtree(path.parent, ignore_errors=True)

    # ------------------------------------------------------------------ writing

    def _write(self, path, data, fsync_dir=True):
        aside = self.tmp / f"{path.name}.{uuid.uuid4().hex}"
        with _private_file(aside) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, path)
        if fsync_dir:
            _fsync_dir(path.parent)


def _private_file(path):
    """A new file open for binary writing, mode 0600 from its creation."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
