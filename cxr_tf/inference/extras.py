"""Optional dependencies (the ``extras_require`` of setup.cfg: ``export``, ``litert``, ``onnx``,
``dicom``, ``serve``): importing one that is not installed raises ``MissingExtra``, whose message
names the extra to install, instead of a bare ``ModuleNotFoundError``.

    onnxruntime = require("onnxruntime", "onnx", "The ONNX backend")
    # MissingExtra: The ONNX backend needs onnxruntime: pip install 'cxr_tf[onnx]'

Front ends catch ``MissingExtra`` (a command exits 2 with the message; the service answers with
the message in JSON, never a 500). Standard library only, so any module may import it cheaply."""

import importlib


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it
    (``extra``) and the module that failed to import (``name``, as ImportError's)."""

    def __init__(self, message, *, name=None, extra=None):
        super().__init__(message, name=name)
        self.extra = extra


def require(module_name, extra, what):
    """The module ``module_name`` imported, or MissingExtra ``"{what} needs {module_name}: pip
    install 'cxr_tf[{extra}]'"`` (chained to the ImportError, which says why, e.g. a missing
    dependency of the module itself)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise MissingExtra(f"{what} needs {module_name}: pip install 'cxr_tf[{extra}]'",
                           name=module_name, extra=extra) from err
