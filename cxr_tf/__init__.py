"""cxr_tf: multi-label chest X-ray classification on NIH ChestX-ray14 (TensorFlow, Keras 3)."""

from cxr_tf.data.labels import LABELS, NUM_LABELS

__version__ = "0.1.0"
__all__ = ["LABELS", "NUM_LABELS", "__version__"]
