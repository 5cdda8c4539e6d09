"""The conversions of a model's backbone (inputs -> pooled ``features``) into portable graph
files: LiteRT flatbuffers (float, or int8 with representative data) and ONNX (tf2onnx). The
upstream deprecation notices the converters print about their own internals are hidden here,
where they arise (``_upstream_deprecations_silenced``). Used by ``cxr_tf.inference.export``."""

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

from cxr_tf.inference.extras import require

log = logging.getLogger(__name__)


class _DropDeprecations(logging.Filter):
    def filter(self, record):
        return "is deprecated and will be removed" not in record.getMessage()


@contextlib.contextmanager
def _upstream_deprecations_silenced():
    """Hide the deprecation notices the converters print about their own internals, which a user
    cannot act on: TensorFlow's int8 calibration builds a ``tf.lite.Interpreter`` (UserWarning
    "tf.lite.Interpreter is deprecated and is scheduled for deletion"; our runtime is
    ai_edge_litert's), and tf2onnx calls TF1's ``convert_variables_to_constants`` and
    ``extract_sub_graph`` (logged on the "tensorflow" logger: "... is deprecated and will be
    removed in a future version")."""
    tf_logger, drop = logging.getLogger("tensorflow"), _DropDeprecations()
    tf_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated", category=UserWarning)
            yield
    finally:
        tf_logger.removeFilter(drop)


def _backbone_function(backbone):
    """A tf.function of the backbone with a dynamic batch: (image[, meta]) -> features."""
    import tensorflow as tf

    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.float32, name=t.name.split(":")[0])
             for t in backbone.inputs]
    names = [s.name for s in specs]
    if len(specs) == 1:
        fn = tf.function(lambda image: {"features": backbone(image, training=False)}, input_signature=specs)
    else:
        fn = tf.function(lambda image, meta: {"features": backbone({"image": image, "meta": meta}, training=False)},
                         input_signature=specs)
    return fn, names


def _backbone_savedmodel(backbone, folder):
    """Write the backbone as a SavedModel with one signature ``serving_default``:
    (image[, meta]) -> {"features"}; returns the input names. The LiteRT converter
    reads this (converting a concrete function directly leaves its variables unfrozen)."""
    import keras

    fn, names = _backbone_function(backbone)
    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.add_endpoint("serving_default", fn)
    archive.write_out(str(folder), verbose=False)
    return names


def to_litert(backbone, path, representative=None):
    """Write the backbone as a LiteRT flatbuffer; int8 when ``representative`` (the
    backbone's inputs, a float32 array or {"image", "meta"}) is given."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        names = _backbone_savedmodel(backbone, Path(tmp) / "backbone")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "backbone"))
        if representative is not None:
            def samples():
                images = representative["image"] if isinstance(representative, dict) else representative
                for i in range(len(images)):
                    if isinstance(representative, dict):
                        yield {"image": images[i:i + 1], "meta": representative["meta"][i:i + 1]}
                    else:
                        yield {"image": images[i:i + 1]}

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            with _upstream_deprecations_silenced():
                flatbuffer = converter.convert()
        except Exception as err:  # noqa: BLE001  the converter raises several types for one cause
            if representative is None:
                raise
            # an op without an int8 kernel: keep it float (the rest stays int8) and say so
            log.warning("int8 conversion with int8 kernels only failed (%s); ops without an int8 kernel "
                        "stay float32", str(err).splitlines()[0][:300])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            with _upstream_deprecations_silenced():
                flatbuffer = converter.convert()
        Path(path).write_bytes(flatbuffer)
    return names


def to_onnx(backbone, path):
    """Write the backbone as ONNX (tf2onnx, opset 17)."""
    require("tf2onnx", "export", "ONNX export")
    import tf2onnx.convert
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn, names = _backbone_function(backbone)
    # freeze first: tf2onnx.convert.from_function leaves some Keras variables (the mean and
    # variance of EfficientNet's Normalization layer) as graph inputs instead of constants
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    with _upstream_deprecations_silenced():
        tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
                                       output_names=[t.name for t in frozen.outputs], opset=17,
                                       output_path=str(path))
    return names
