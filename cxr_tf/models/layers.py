"""Custom layers of cxr_tf, all registered serializable (package ``cxr_tf``), so
``keras.models.load_model("model.keras")`` needs no ``custom_objects``.

- ``MCDropout``: dropout that is always on, for Monte-Carlo sampling without
  switching BatchNormalization to batch statistics.
- ``BackbonePreprocess``: raw greyscale 0..255 (H, W, 1) -> 3 channels scaled the
  way each ImageNet backbone expects (``keras.applications.*.preprocess_input``
  reproduced in-graph), so a SavedModel client sends pixels and nothing else.
- ``cross_attention``: one direction of the fusion network's cross-attention
  (multi-head attention + residual + LayerNorm), built from stock Keras layers.
"""

import keras
from keras import layers, ops

# keras.applications.imagenet_utils conventions
_TORCH_MEAN = (0.485, 0.456, 0.406)  # RGB, on 0..1 pixels
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # BGR, on 0..255 pixels

PREPROCESS_MODES = ("torch", "caffe", "raw", "unit")
"""torch: DenseNet (x/255 - mean) / std per RGB channel; caffe: ResNet50 (RGB->BGR,
minus the BGR ImageNet mean, no scaling); raw: EfficientNet (0..255 passed on, its
own Rescaling + Normalization layers are inside the keras.applications model);
unit: x/255 for the models trained from scratch (simple CNN, multimodal)."""


@keras.saving.register_keras_serializable(package="cxr_tf")
class MCDropout(layers.Dropout):
    """Dropout that drops at inference too (``training`` is ignored).

    Used in the head when ``mc_dropout=True``: running the head T times gives T
    samples, while BatchNormalization elsewhere stays in inference mode.
    """

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@keras.saving.register_keras_serializable(package="cxr_tf")
class BackbonePreprocess(layers.Layer):
    """(B, H, W, 1) raw pixels 0..255 -> (B, H, W, channels) float in the backbone's range.

    ``mode`` is one of ``PREPROCESS_MODES``; ``channels`` is 3 for ImageNet
    backbones (the grey channel repeated, as ``preprocess_input`` would see an
    RGB film with R = G = B) or 1 for the from-scratch CNNs.
    """

    def __init__(self, mode="torch", channels=3, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"BackbonePreprocess mode={mode!r}: expected one of {PREPROCESS_MODES}")
        if channels not in (1, 3):
            raise ValueError(f"BackbonePreprocess channels={channels}: expected 1 or 3")
        self.mode = mode
        self.channels = channels

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channels == 3:
            x = ops.repeat(x, 3, axis=-1)  # grey -> R = G = B
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN[: self.channels], self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD[: self.channels], self.compute_dtype)
            x = (x / 255.0 - mean) / std
        elif self.mode == "caffe":
            # R = G = B, so flipping RGB -> BGR is the identity; subtract the BGR mean
            x = x - ops.convert_to_tensor(_CAFFE_MEAN_BGR[: self.channels], self.compute_dtype)
        elif self.mode == "unit":
            x = x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels}


def cross_attention(query, context, num_heads, key_dim, name):
    """One direction of cross-attention on token sequences.

    query (B, N, C) attends to context (B, M, C); returns LayerNorm(query +
    MHA(query, context)) of shape (B, N, C). Layers are named ``{name}_mha`` and
    ``{name}_norm``.
    """
    attended = layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, name=f"{name}_mha")(query, context)
    summed = layers.Add(name=f"{name}_add")([query, attended])
    return layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(summed)
