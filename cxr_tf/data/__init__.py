"""Data: label sets, NIH table reading, patient-safe splits, film decoding, the TFRecord schema,
the records manifest, the builder, the tf.data pipeline and augmentation.

The pipeline's public functions are importable from here (``from cxr_tf.data import
make_dataset``); they load lazily, so that importing ``cxr_tf.data.datasets.nih`` or the builder never
imports TensorFlow (the builder's worker processes stay TensorFlow-free).
"""

_PIPELINE = ("make_dataset", "meta_vector", "verify_records", "input_threads")
_MANIFEST = ("read_manifest",)
__all__ = [*_PIPELINE, *_MANIFEST]


def __getattr__(name):
    if name in _PIPELINE:
        from cxr_tf.data import pipeline

        return getattr(pipeline, name)
    if name in _MANIFEST:
        from cxr_tf.data import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'cxr_tf.data' has no attribute {name!r}")
