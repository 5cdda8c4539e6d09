"""Monte-Carlo dropout: head-only sampling, statistics, BatchNormalization untouched."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.data.labels import NUM_LABELS
from cxr_tf.inference.uncertainty import MCSampler, high_uncertainty, mc_predict, split_model


class CountFilms(keras.layers.Layer):
    """Identity that counts the films passing through it (a non-trainable variable)."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x):
        self.seen.assign_add(tf.cast(tf.shape(x)[0], self.seen.dtype))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def counting_model(size=32, dropout=0.5):
    """A model in the cxr_tf layout (image -> ... -> features -> head -> predictions)
    with BatchNormalization in the backbone and a film counter before ``features``."""
    image = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = CountFilms(name="counter")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    h = keras.layers.Dropout(dropout)(features)
    h = keras.layers.Dense(32, activation="relu")(h)
    h = keras.layers.Dropout(dropout)(h)
    out = keras.layers.Dense(NUM_LABELS, activation="sigmoid", name="predictions")(h)
    model = keras.Model(image, out)
    # non-trivial BN statistics, so "unchanged" means something
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(8, 0.3, np.float32))
    bn.moving_variance.assign(np.full(8, 2.0, np.float32))
    return model


def films(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size)).astype(np.uint8)


def bn_state(model):
    return [v.numpy().copy() for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def test_backbone_runs_once_head_sampled_bn_untouched():
    model = counting_model()
    before = bn_state(model)
    mean, std = mc_predict(model, films(6), samples=25)
    assert mean.shape == std.shape == (6, NUM_LABELS) and mean.dtype == np.float32
    assert model.get_layer("counter").seen.numpy() == 6  # six films, one backbone pass each
    assert (std > 0).mean() > 0.9 and np.all((0 <= mean) & (mean <= 1))
    for a, b in zip(before, bn_state(model)):
        np.testing.assert_array_equal(a, b)
    # the pitfall the module avoids: training=True moves the BN statistics
    model(films(6)[..., None].astype(np.float32), training=True)
    assert any(not np.array_equal(a, b) for a, b in zip(before, bn_state(model)))


def test_mean_matches_deterministic_and_one_sample_has_no_spread():
    model = counting_model()
    x = films(4, seed=1)
    deterministic = model.predict(x[..., None].astype(np.float32), verbose=0)
    mean, std = MCSampler(model, seed=0)(x, samples=400)
    np.testing.assert_allclose(mean, deterministic, atol=0.03)
    _, std1 = mc_predict(model, x, samples=1)
    assert np.all(std1 == 0)
    # two calls draw fresh dropout masks
    a, _ = mc_predict(model, x, samples=3)
    b, _ = mc_predict(model, x, samples=3)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("mc_dropout", [False, True])
def test_registry_model_with_and_without_mc_dropout_layers(mc_dropout):
    from cxr_tf.models import build_model

    model = build_model("simple_cnn", image_size=32, weights=None, dropout=0.5, mc_dropout=mc_dropout)
    backbone, head = split_model(model)
    assert backbone.outputs[0].shape[-1] == head.inputs[0].shape[-1]
    mean, std = mc_predict(model, films(3)[..., None], samples=10)
    assert mean.shape == (3, NUM_LABELS) and (std > 0).any()


def test_multimodal_meta_goes_through_the_backbone():
    from cxr_tf.models import build_model

    model = build_model("multimodal", image_size=32, weights=None, dropout=0.5)
    meta = np.array([[0.0, 1, 0, 1, 0], [2.0, 0, 1, 0, 1]], np.float32)
    mean, std = mc_predict(model, films(2), samples=8, meta=meta)
    assert mean.shape == std.shape == (2, NUM_LABELS)
    with pytest.raises(ValueError, match="meta"):
        mc_predict(model, films(2), samples=2)


def test_high_uncertainty_flag_and_errors():
    std = np.zeros((3, NUM_LABELS))
    std[1, 4] = 0.2
    std[2, 0] = 0.05
    assert high_uncertainty(std, threshold=0.1).tolist() == [False, True, False]
    assert high_uncertainty(std, threshold=0.05).tolist() == [False, True, True]
    model = counting_model(dropout=0.0)
    with pytest.raises(ValueError, match="samples"):
        mc_predict(counting_model(), films(1), samples=0)
    no_dropout = keras.Model(model.inputs, keras.layers.Dense(NUM_LABELS, name="predictions")(
        model.get_layer("features").output))
    with pytest.raises(ValueError, match="no Dropout"):
        mc_predict(no_dropout, films(1))
    with pytest.raises(ValueError, match="expects"):
        mc_predict(counting_model(), films(1, size=40))
