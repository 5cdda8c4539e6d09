"""JSON files written atomically: a killed process leaves the old file or the new one, never
half of one. Used by every module that owns a JSON format (manifest, run folder, reports)."""

import json
from pathlib import Path

import numpy as np


def _default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def write_json(path, value, indent=2):
    """Write ``value`` as JSON to ``path`` via a temporary file and a rename; returns the path.
    NumPy scalars and paths are converted."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=indent, default=_default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path, default=None):
    """The JSON value in ``path``, or ``default`` when the file does not exist. ValueError
    naming the file when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
