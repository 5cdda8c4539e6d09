"""Monte-Carlo dropout uncertainty, sampling only the head.

Every cxr_tf model has a layer named ``features`` (the pooled vector, after the
image and meta branches are joined) and a head ``features -> predictions`` that
holds the dropout layers. So the backbone, which is nearly all of the cost, runs
once per film; the head runs T times on the features tiled T times (one batched
call, (T·N, D)), with dropout always on and every other layer in inference mode.

The head used for sampling is a clone of the model's head whose ``Dropout`` layers
are replaced by ``cxr_tf.models.layers.MCDropout`` of the same rate; all other layers are
the model's own objects (shared weights, nothing copied). It therefore works the
same for models built with ``mc_dropout=False`` and ``mc_dropout=True``, and
BatchNormalization layers, wherever they are, always run with their moving
statistics, which are never updated (``model(x, training=True)`` would do both
wrong: batch statistics and updated moving averages).

Repeatable sampling: given ``seeds`` (one integer per film; the predictor derives
it from the film's pixels and the run, ``film_seed``), each film's head is sampled
on its own with every dropout layer's seed state set from that film's seed, so a
film gets the same masks, hence the same mean and std, whatever batch it comes in
and however often it is sent. Without seeds the masks are fresh on every call.
"""

import hashlib

import weakref

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.models import model_input_spec
from cxr_tf.models.layers import MCDropout
from cxr_tf.inference.triage import DEFAULT_UNCERTAINTY_THRESHOLD

DEFAULT_SAMPLES = 25
FEATURES_LAYER = "features"


def batch_inputs(model, images, meta=None):
    """The model's input for a batch: float32 (N, H, W, 1) pixels 0..255, plus
    ``{"image", "meta"}`` for a model with a ``meta`` input.

    images: (N, H, W) or (N, H, W, 1), any numeric dtype, raw 0..255 (the model
    preprocesses). meta: (N, 5) float, required by multimodal models.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1) greyscale, got shape {images.shape}")
    size, multimodal = model_input_spec(model)
    if images.shape[1:3] != (size, size):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} px, the model expects "
                         f"{size}x{size}: resize with cxr_tf.data.images.to_square")
    if not multimodal:
        if meta is not None:
            raise ValueError("meta given, but the model has only an image input")
        return images
    if meta is None:
        raise ValueError("the model has an image and a meta input: pass meta (N, 5), e.g. from "
                         "cxr_tf.data.pipeline.meta_vector")
    meta = np.asarray(meta, dtype=np.float32).reshape(len(images), -1)
    return {"image": images, "meta": meta}


def split_model(model, features_layer=FEATURES_LAYER):
    """(backbone, head): ``backbone`` maps the model's inputs to the ``features``
    vector (N, D); ``head`` maps features to the predictions (N, 14). Both share
    the model's layers and weights."""
    try:
        features = model.get_layer(features_layer).output
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named {features_layer!r}: cxr_tf models "
                         "name the pooled vector feeding the head 'features'") from None
    backbone = keras.Model(model.inputs, features, name=f"{model.name}_backbone")
    try:
        head = keras.Model(features, model.outputs[0], name=f"{model.name}_head")
    except ValueError as err:
        raise ValueError(f"model {model.name!r}: the head must depend on {features_layer!r} only ({err})") from None
    return backbone, head


def always_on_dropout(head, seed=None):
    """A clone of ``head`` whose Dropout layers (MCDropout included) are MCDropout
    of the same rate; every other layer is the same object (weights shared)."""
    count = 0

    def swap(layer):
        nonlocal count
        if isinstance(layer, keras.layers.Dropout):
            count += 1
            return MCDropout(layer.rate, seed=None if seed is None else seed + count, name=f"{layer.name}_mc")
        return layer

    sampled = keras.models.clone_model(head, clone_function=swap)
    if count == 0:
        raise ValueError(f"{head.name}: no Dropout layer between 'features' and 'predictions'; "
                         "MC dropout needs a model built with dropout > 0")
    return sampled


def film_seed(pixels, run_key=b""):
    """A 63-bit seed from a film's model input (its pixel bytes) and the run.

    pixels: the prepared model input (any array; hashed as float32 C-order bytes, so
    the same image gives the same seed whether it came as PNG, JPEG or DICOM).
    run_key: bytes naming the run (e.g. a digest of its model.keras)."""
    digest = hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes() + bytes(run_key)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _seed_states(head):
    """The seed-state variables of the head's dropout layers, in layer order."""
    return [layer.seed_generator.state for layer in head.layers
            if isinstance(layer, keras.layers.Dropout) and getattr(layer, "seed_generator", None) is not None]


class MCSampler:
    """Compiled MC-dropout predictor for one model (see the module docstring).

    ``sampler(images, samples=25, meta=None, seeds=None) -> (mean, std)``, both float32
    (N, K); ``seeds``: (N,) integers for repeatable per-film sampling (module docstring).
    ``sampler.deterministic(images, meta=None)``: one ordinary inference pass (N, K).
    """

    def __init__(self, model, batch_size=32, seed=None):
        # hold the backbone and head (sharing the model's layers), not the model itself,
        # so the weak per-model cache of ``sampler_for`` can let the model go
        self.batch_size = int(batch_size)
        self.backbone, head = split_model(model)
        self.head = always_on_dropout(head, seed)
        self._seed_states = _seed_states(self.head)
        self._features = tf.function(lambda x: self.backbone(x, training=False), reduce_retracing=True)
        self._sample = tf.function(self._sample_head, reduce_retracing=True)
        self._single = tf.function(lambda x: head(self.backbone(x, training=False), training=False),
                                   reduce_retracing=True)
        self.num_labels = int(model.outputs[0].shape[-1])
        self.backbone_calls = 0  # films through the backbone; tests check it equals N

    def _sample_head(self, features, samples):
        n = tf.shape(features)[0]
        tiled = tf.tile(features, [samples, 1])  # (T·N, D); row t·N + i is sample t of film i
        probs = self.head(tiled, training=False)  # (T·N, K)
        probs = tf.reshape(tf.cast(probs, tf.float32), [samples, n, -1])  # (T, N, K)
        return tf.reduce_mean(probs, axis=0), tf.math.reduce_std(probs, axis=0)

    def features(self, images, meta=None):
        """The ``features`` vectors (N, D) of a batch, float32: one backbone pass."""
        x = batch_inputs(self.backbone, images, meta)
        out = [self._features(chunk).numpy() for chunk in _chunks(x, self.batch_size)]
        self.backbone_calls += _length(x)
        return np.concatenate(out) if out else np.zeros((0, self.backbone.outputs[0].shape[-1]), np.float32)

    def __call__(self, images, samples=DEFAULT_SAMPLES, meta=None, seeds=None):
        if samples < 1:
            raise ValueError(f"samples={samples}: need at least 1 Monte-Carlo pass")
        x = batch_inputs(self.backbone, images, meta)
        if seeds is not None and len(seeds) != _length(x):
            raise ValueError(f"{len(seeds)} seeds for {_length(x)} films: give one seed per film")
        means, stds = [], []
        count = tf.constant(samples, tf.int32)
        for start, chunk in zip(range(0, _length(x), self.batch_size), _chunks(x, self.batch_size)):
            features = self._features(chunk)
            self.backbone_calls += _length(chunk)
            if seeds is None:
                mean, std = self._sample(features, count)
                means.append(mean.numpy())
                stds.append(std.numpy())
                continue
            for i in range(_length(chunk)):  # one film at a time: its masks depend on its seed only
                self.seed(seeds[start + i])
                mean, std = self._sample(features[i:i + 1], count)
                means.append(mean.numpy())
                stds.append(std.numpy())
        if not means:
            empty = np.zeros((0, self.num_labels), np.float32)
            return empty, empty.copy()
        return np.concatenate(means), np.concatenate(stds)

    def seed(self, seed):
        """Set every dropout layer's seed state from ``seed`` (an integer): the next
        head call draws the masks this seed fixes."""
        for k, state in enumerate(self._seed_states):
            state.assign(np.array([int(seed) & 0x7FFFFFFFFFFFFFFF, k], dtype=state.dtype))

    def deterministic(self, images, meta=None):
        """Ordinary inference (dropout off unless the model's own layers are MCDropout): (N, 14)."""
        x = batch_inputs(self.backbone, images, meta)
        out = [self._single(chunk).numpy() for chunk in _chunks(x, self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_labels), np.float32)


_SAMPLERS = weakref.WeakKeyDictionary()


def sampler_for(model):
    """The MCSampler of ``model``, built on first use and cached while the model lives."""
    sampler = _SAMPLERS.get(model)
    if sampler is None:
        sampler = _SAMPLERS[model] = MCSampler(model)
    return sampler


def mc_predict(model, images, samples=DEFAULT_SAMPLES, meta=None, seeds=None):
    """Monte-Carlo dropout prediction.

    model: a cxr_tf model (layers ``features`` and ``predictions``). images: (N, H, W)
    or (N, H, W, 1) raw 0..255 at the model's input size. meta: (N, 5) for multimodal
    models. Returns ``(mean, std)``: float32 (N, 14) mean probability and standard
    deviation over ``samples`` dropout draws of the head; the backbone runs once.
    seeds: (N,) integers make each film's draws repeatable (``film_seed``).
    """
    return sampler_for(model)(images, samples=samples, meta=meta, seeds=seeds)


def high_uncertainty(std, threshold=DEFAULT_UNCERTAINTY_THRESHOLD):
    """Per film: True when any finding's MC std reaches ``threshold``. std: (N, 14) -> bool (N,)."""
    std = np.asarray(std)
    return (std >= threshold).any(axis=-1)


def _length(x):
    return len(x["image"]) if isinstance(x, dict) else len(x)


def _chunks(x, size):
    n = _length(x)
    for start in range(0, n, size):
        if isinstance(x, dict):
            yield {k: v[start:start + size] for k, v in x.items()}
        else:
            yield x[start:start + size]
