"""Layers of cxr_tf models.

New models hold built-in Keras layers only, so a run's ``model.keras`` loads with
plain ``keras.models.load_model`` (safe mode, no ``custom_objects``) in a Python
where cxr_tf is not installed (``docs/deployment.md``):

- ``preprocess``: raw greyscale 0..255 (H, W, 1) -> the backbone's input range, as
  built-in ``Concatenate`` (grey -> R = G = B) + ``Rescaling`` (per-channel scale
  and offset) layers, so a SavedModel client sends pixels and nothing else.

The two custom layers stay registered (package ``cxr_tf``) so model.keras files
written before the switch still load through cxr_tf:

- ``MCDropout``: dropout that is always on. Only the MC sampler's head clone uses
  it now (``cxr_tf.inference.uncertainty``); models are built with plain Dropout.
- ``BackbonePreprocess``: the former single-layer form of ``preprocess``.
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


def preprocess(image, mode, channels=3, name="preprocess"):
    """(B, H, W, 1) raw pixels 0..255 -> (B, H, W, channels) in the backbone's range,
    with built-in layers only (same values as ``BackbonePreprocess(mode, channels)``).

    The last layer is named ``name``; with 3 channels the grey -> RGB copy is
    ``{name}_rgb``. torch: (x/255 - mean) / std as one multiply-add per channel;
    caffe: x - BGR mean (R = G = B, so the RGB -> BGR flip is the identity); raw:
    the pixels as they are; unit: x/255.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode={mode!r}: expected one of {PREPROCESS_MODES}")
    if channels not in (1, 3):
        raise ValueError(f"preprocess channels={channels}: expected 1 or 3")
    x = image
    if channels == 3:
        last = mode == "raw"
        x = layers.Concatenate(axis=-1, name=name if last else f"{name}_rgb")([image, image, image])
        if last:
            return x
    if mode == "torch":
        scale = [1.0 / (255.0 * s) for s in _TORCH_STD[:channels]]
        offset = [-m / s for m, s in zip(_TORCH_MEAN[:channels], _TORCH_STD[:channels])]
    elif mode == "caffe":
        scale, offset = 1.0, [-m for m in _CAFFE_MEAN_BGR[:channels]]
    elif mode == "unit":
        scale, offset = 1.0 / 255.0, 0.0
    else:  # raw, one channel
        scale, offset = 1.0, 0.0
    return layers.Rescaling(scale, offset, name=name)(x)


def cross_attention(query, context, num_heads, key_dim, name):
    """One direction of cross-attention on token sequences.

    query (B, N, C) attends to context (B, M, C); returns LayerNorm(query +
    MHA(query, context)) of shape (B, N, C). Layers are named ``{name}_mha`` and
    ``{name}_norm``.
    """
    attended = layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, name=f"{name}_mha")(query, context)
    summed = layers.Add(name=f"{name}_add")([query, attended])
    return layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(summed)
