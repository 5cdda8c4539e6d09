"""Imported first by the command modules (``python -m cxr_tf.fit`` …): TensorFlow loads with its
C++ start-up lines (oneDNN notice, CUDA probing on hosts without a GPU) not printed, and later
C++ log lines below the level ``TF_CPP_MIN_LOG_LEVEL`` sets (default here: errors only on a
host without an NVIDIA device, warnings and errors with one). A ``TF_CPP_MIN_LOG_LEVEL`` the user
set wins, and then nothing is hidden. TensorFlow 2.19+ prints its start-up lines before it
reads that variable (tensorflow/tensorflow#100442), so they are silenced by pointing the
process's standard error at /dev/null for the import alone. Library imports never do this:
only the commands, which own their process, import this module."""

import os
import sys
from pathlib import Path


def _import_tensorflow_quietly():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except Exception:
                os.dup2(saved, 2)
                print("TensorFlow failed to import; set TF_CPP_MIN_LOG_LEVEL=0 to see its own messages",
                      file=sys.stderr)
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if Path("/dev/nvidiactl").exists() else "3"
    _import_tensorflow_quietly()
