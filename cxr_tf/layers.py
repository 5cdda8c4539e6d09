"""Custom Keras layers, all registered serializable so that
``keras.models.load_model("model.keras")`` needs no ``custom_objects``."""

import keras
from keras import ops

# Per-channel constants of the ImageNet preprocessing each backbone was trained with
# (keras.applications.imagenet_utils: "torch" for DenseNet, "caffe" for ResNet50).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS_MODES = ("torch", "caffe", "raw", "unit")


@keras.saving.register_keras_serializable(package="cxr_tf")
class MCDropout(keras.layers.Dropout):
    """Dropout that is always on, at inference too: Monte-Carlo dropout without
    calling the model with ``training=True`` (which would also switch
    BatchNormalization to batch statistics)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@keras.saving.register_keras_serializable(package="cxr_tf")
class BackboneInput(keras.layers.Layer):
    """Raw greyscale pixels (B, H, W, 1), 0–255, to what a backbone expects.

    mode:
      ``torch``  3 channels, x/255, ImageNet mean/std (DenseNet);
      ``caffe``  3 channels, BGR order, ImageNet mean subtracted, 0–255 scale (ResNet50);
      ``raw``    3 channels, 0–255 unchanged (EfficientNet rescales inside itself);
      ``unit``   1 channel, x/255 (the small CNNs).
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode={mode!r}: expected one of {PREPROCESS_MODES}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "unit":
            return x / 255.0
        x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            # Greyscale has equal channels, so RGB→BGR is a no-op; the means are BGR.
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        return x

    def compute_output_shape(self, input_shape):
        channels = 1 if self.mode == "unit" else 3
        return (*input_shape[:-1], channels)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
