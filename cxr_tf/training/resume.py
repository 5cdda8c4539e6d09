"""Naming and resuming runs: a run killed at any point and started again with the same command
continues the newest unfinished run of the same arch whose config matches (or the run
``--run-name`` names). Under multi-worker training the chief chooses and the workers agree."""

import re
from datetime import datetime
from pathlib import Path

from cxr_tf import runs
from cxr_tf.data.jsonfile import read_json
from cxr_tf.training import config as config_lib
from cxr_tf.training import distribute

RUN_NAME_RE = re.compile(r"^(?P<arch>.+)-(?P<stamp>\d{8}-\d{6})$")


def _stamp_to_int(stamp):
    return int(stamp.replace("-", ""))


def _int_to_stamp(value):
    digits = f"{int(value):014d}"
    return f"{digits[:8]}-{digits[8:]}"


def _resumable(run_dir, signature):
    """Whether ``run_dir`` is an unfinished run started with the same config signature."""
    state = runs.read_state(run_dir, {})
    saved = read_json(run_dir / runs.CONFIG)
    if state.get("status") == "complete" or saved is None:
        return False
    saved_signature = config_lib.resume_signature({k: saved.get(k) for k in config_lib.SCHEMA})
    return saved_signature == signature


def choose_run_dir(out, arch, signature, run_name=None, resume=True, now=None):
    """(run folder, resumed) for a new or restarted run (chief's choice).

    run_name: an explicit folder name under ``out``: resumed when it holds an
    unfinished run of the same config; an error when it is complete or differs.
    Otherwise the newest unfinished ``<arch>-<timestamp>`` run with the same config
    is resumed (unless ``resume`` is False), else a new timestamped folder is named.
    """
    out = Path(out)
    if run_name:
        if "/" in run_name or run_name in (".", ".."):
            raise ValueError(f"--run-name {run_name!r}: a folder name, not a path")
        run_dir = out / run_name
        if not run_dir.exists():
            return run_dir, False
        if runs.read_state(run_dir, {}).get("status") == "complete":
            raise ValueError(f"run {run_dir} is already complete; choose another --run-name or remove it")
        if not _resumable(run_dir, signature):
            raise ValueError(f"run {run_dir} was started with a different config ({run_dir / 'config.json'}); "
                             "restart it with the same settings or choose another --run-name")
        return run_dir, True
    if resume and out.is_dir():
        candidates = sorted((p for p in out.iterdir() if p.is_dir() and (m := RUN_NAME_RE.match(p.name))
                             and m["arch"] == arch), key=lambda p: p.name, reverse=True)
        for run_dir in candidates:
            if _resumable(run_dir, signature):
                return run_dir, True
    stamp = now or datetime.now()
    run_dir = out / f"{arch}-{stamp:%Y%m%d-%H%M%S}"
    while run_dir.exists():  # two runs in one second
        stamp = datetime.fromtimestamp(stamp.timestamp() + 1)
        run_dir = out / f"{arch}-{stamp:%Y%m%d-%H%M%S}"
    return run_dir, False


def is_chief(strategy):
    """Whether this process writes the run folder: always, unless it is a non-chief
    worker of a multi-worker strategy."""
    return distribute.is_chief() or not distribute.is_multiworker(strategy)


def agree_on_run_dir(strategy, out, arch, signature, run_name, resume):
    """The chief chooses the run folder; under multi-worker the others get its timestamp."""
    chief = is_chief(strategy)
    if chief:
        run_dir, resumed = choose_run_dir(out, arch, signature, run_name, resume)
    else:
        run_dir, resumed = Path(out) / (run_name or f"{arch}-00000000-000000"), False
    if run_name or not distribute.is_multiworker(strategy):
        return run_dir, resumed
    stamp = RUN_NAME_RE.match(run_dir.name)["stamp"] if chief else "00000000-000000"
    agreed = distribute.chief_value(strategy, _stamp_to_int(stamp))
    return Path(out) / f"{arch}-{_int_to_stamp(agreed)}", resumed
