"""Data: dataset adapters, the findings vocabulary, patient-safe splits, film decoding, the
TFRecord schema, the records manifest, the builder, the tf.data pipeline, records checking and
augmentation.

The most used public functions are importable from here (``from cxr_tf.data import
make_dataset``; the manifest: ``from cxr_tf.data import manifest``, then ``manifest.read(folder)``);
they load lazily, so that importing ``cxr_tf.data.datasets.nih`` or the builder never
imports TensorFlow (the builder's worker processes stay TensorFlow-free).
"""

from importlib import import_module

_HOMES = {"make_dataset": "pipeline", "meta_vector": "pipeline", "input_threads": "pipeline",
          "verify_records": "verify"}
__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(import_module(f"cxr_tf.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cxr_tf.data' has no attribute {name!r}")
