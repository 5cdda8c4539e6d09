"""Per-sample random augmentation of whole batches: one Keras layer block, built once.

``build_augmenter(params, input_size, image_size)`` returns a ``keras.Sequential``
that takes a batch of films (B, N, N, 1) float32 0–255 at the stored size N and
returns (B, S, S, 1) float32 0–255 at the training size S. Every sample of the
batch draws its own transformation. Called with ``training=False`` it only
resizes (area) to S, so the block is a no-op at evaluation.

The geometric part is one layer, ``RandomGeometry``: random resized crop,
rotation, zoom and translation composed into ONE projective transform per sample
and resampled once (bilinear). The stock ``RandomRotation`` / ``RandomZoom`` /
``RandomTranslation`` layers each resample the batch: three interpolations blur
the film three times and cost three times the work (measured here at 224 px:
~170 img/s for the three stock layers vs ~500 img/s for the one fused warp on 2
CPU cores). Brightness and contrast are the stock Keras layers with
``value_range=(0, 255)`` (they clip to it). Horizontal flip is off by default:
the heart sits on the left, and a flipped film is a different anatomy
(dextrocardia); switch it on with ``flip: true``.

Where it runs: ``cxr_tf.data.make_dataset`` applies the block with
``dataset.map`` after ``batch`` (on the host CPU, per sample, in parallel with the
model step). On a GPU host the same block can run on the device instead: pass
``augment=False`` to ``make_dataset`` and call ``augmenter(images, training=True)``
at the start of the train step (or put it in front of the model); every layer
here is plain TensorFlow ops with GPU kernels. Rotation/projective transforms do
not compile under XLA, so keep it outside a jit-compiled step.

Parameters (the ``augment:`` mapping of ``pipelines/*.yaml``; ``DEFAULT_AUGMENT``
holds the defaults; 0 / ``[1, 1]`` switches one off):

=================== ============ ===============================================
key                 default      meaning
=================== ============ ===============================================
crop_scale          [0.8, 1.0]   area of the random crop, fraction of the film
crop_ratio          [0.9, 1.111] aspect ratio (w/h) of the crop, log-uniform
rotation_degrees    10           rotation uniform in ±degrees
zoom                0.1          scale uniform in 1 ± zoom (both axes together)
translation         0.05         shift uniform in ± fraction of the side, per axis
brightness          0.1          add uniform ± fraction of 255
contrast            0.1          contrast factor uniform in 1 ± contrast
flip                false        random horizontal flip
=================== ============ ===============================================
"""

import math

import keras
import tensorflow as tf

DEFAULT_AUGMENT = {
    "crop_scale": (0.8, 1.0),
    "crop_ratio": (0.9, 1.0 / 0.9),
    "rotation_degrees": 10.0,
    "zoom": 0.1,
    "translation": 0.05,
    "brightness": 0.1,
    "contrast": 0.1,
    "flip": False,
}


def resolve_params(params=None):
    """``DEFAULT_AUGMENT`` updated with ``params`` (a dict, e.g. from a pipeline
    yaml). Unknown keys and out-of-range values raise ValueError naming them."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ValueError(f"unknown augmentation parameter(s) {unknown}; valid: {sorted(DEFAULT_AUGMENT)}")
    out = {**DEFAULT_AUGMENT, **params}
    for key in ("crop_scale", "crop_ratio"):
        try:
            low, high = (float(v) for v in out[key])
        except (TypeError, ValueError):
            raise ValueError(f"augment {key}={out[key]!r}: expected a pair [low, high]") from None
        if not 0 < low <= high or (key == "crop_scale" and high > 1):
            bound = " <= 1" if key == "crop_scale" else ""
            raise ValueError(f"augment {key}={out[key]!r}: need 0 < low <= high{bound}")
        out[key] = (low, high)
    for key in ("rotation_degrees", "zoom", "translation", "brightness", "contrast"):
        value = float(out[key])
        limit = {"rotation_degrees": 180, "zoom": 0.99, "translation": 0.5, "brightness": 1, "contrast": 0.99}[key]
        if not 0 <= value <= limit:
            raise ValueError(f"augment {key}={out[key]!r}: must be in [0, {limit}]")
        out[key] = value
    out["flip"] = bool(out["flip"])
    return out


@keras.saving.register_keras_serializable(package="cxr_tf")
class RandomGeometry(keras.layers.Layer):
    """Random resized crop + rotation + zoom + translation as one warp per sample.

    Input (B, N, N, C) float, output (B, S, S, C) float32 with S = ``output_size``.
    For each sample: a crop of area ``crop_scale`` × N² and aspect ``crop_ratio``
    at a random place inside the film is mapped onto the S×S output, rotated by
    ±``rotation_degrees``, scaled by 1 ± ``zoom`` and shifted by ± ``translation``
    × S; one bilinear resample, outside pixels filled with 0 (black, like a
    collimated edge, rather than mirrored anatomy). ``training=False``: area resize
    to S (identity when N == S).
    """

    def __init__(self, output_size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_degrees=0.0,
                 zoom=0.0, translation=0.0, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.crop_ratio = tuple(float(v) for v in crop_ratio)
        self.rotation_degrees = float(rotation_degrees)
        self.zoom = float(zoom)
        self.translation = float(translation)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # ImageProjectiveTransformV3 has no XLA kernel: keeps jit_compile="auto" off

    def _uniform(self, shape, low, high):
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.seed_generator)

    def transforms(self, batch, in_size):
        """(B, 8) projective transforms mapping output pixel (x, y) to input pixel."""
        n = tf.cast(in_size, tf.float32)
        s = float(self.output_size)
        area = self._uniform((batch,), *self.crop_scale)
        log_ratio = self._uniform((batch,), math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        ratio = tf.exp(log_ratio)
        crop_w = tf.minimum(n * tf.sqrt(area * ratio), n)  # input pixels
        crop_h = tf.minimum(n * tf.sqrt(area / ratio), n)
        # crop centre, continuous coordinates in [w/2, n - w/2]; -0.5 -> pixel-index coordinates
        cx = crop_w / 2 + self._uniform((batch,), 0.0, 1.0) * (n - crop_w) - 0.5
        cy = crop_h / 2 + self._uniform((batch,), 0.0, 1.0) * (n - crop_h) - 0.5
        theta = self._uniform((batch,), -1.0, 1.0) * (self.rotation_degrees * math.pi / 180)
        scale = self._uniform((batch,), 1.0 - self.zoom, 1.0 + self.zoom)
        tx = self._uniform((batch,), -self.translation, self.translation) * s
        ty = self._uniform((batch,), -self.translation, self.translation) * s
        cos, sin = tf.cos(theta), tf.sin(theta)
        sx, sy = scale * crop_w / s, scale * crop_h / s  # input pixels per output pixel
        a0, a1 = sx * cos, -sx * sin
        b0, b1 = sy * sin, sy * cos
        ox, oy = (s - 1) / 2 + tx, (s - 1) / 2 + ty  # output point that lands on the crop centre
        a2 = cx - a0 * ox - a1 * oy
        b2 = cy - b0 * ox - b1 * oy
        zeros = tf.zeros_like(a0)
        return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def call(self, images, training=True):
        images = tf.cast(images, tf.float32)
        if not training:
            if images.shape[1] == self.output_size and images.shape[2] == self.output_size:
                return images
            return tf.image.resize(images, (self.output_size, self.output_size), method="area")
        shape = tf.shape(images)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=self.transforms(shape[0], shape[1]),
            output_shape=tf.constant([self.output_size, self.output_size], tf.int32),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "crop_scale": self.crop_scale,
                "crop_ratio": self.crop_ratio, "rotation_degrees": self.rotation_degrees, "zoom": self.zoom,
                "translation": self.translation, "seed": self.seed}


def build_augmenter(params=None, image_size=224, seed=None):
    """The augmentation block as a ``keras.Sequential`` (build it once, outside any
    ``map`` function). Input (B, N, N, 1) float 0–255 at any stored size N ≥ 1;
    output (B, image_size, image_size, 1) float32 0–255. ``params``: see the module
    docstring (merged over ``DEFAULT_AUGMENT``). ``seed`` makes the draws repeatable."""
    p = resolve_params(params)
    layers = [RandomGeometry(image_size, crop_scale=p["crop_scale"], crop_ratio=p["crop_ratio"],
                             rotation_degrees=p["rotation_degrees"], zoom=p["zoom"],
                             translation=p["translation"], seed=seed, name="geometry")]
    if p["brightness"]:
        layers.append(keras.layers.RandomBrightness(p["brightness"], value_range=(0, 255), seed=seed,
                                                    dtype="float32", name="brightness"))
    if p["contrast"]:
        layers.append(keras.layers.RandomContrast(p["contrast"], value_range=(0, 255), seed=seed,
                                                  dtype="float32", name="contrast"))
    if p["flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32", name="flip"))
    return keras.Sequential(layers, name="augment")
