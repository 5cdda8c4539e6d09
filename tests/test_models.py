"""The model zoo, looped over the registry with weights=None at small sizes:
contract (inputs, "features", "predictions", Grad-CAM layer), serialization
round trips, freezing, MC dropout, and learning on synthetic films."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from conftest import settle_batch_norm
from cxr_tf.data.labels import NUM_LABELS
from cxr_tf.models.layers import BackbonePreprocess, MCDropout
from cxr_tf.models import ARCHITECTURES, build_model, is_backbone_layer, set_backbone_trainable
from cxr_tf.data.synthetic import make_films

SIZE = 32  # smallest size every backbone builds at (fusion: a 2×2 token grid)
ARCHS = sorted(ARCHITECTURES)

# arch: (image size, epochs, peak learning rate, head dropout) for the learning test: Adam, the
# learning rate decayed to 0 along a cosine over the run, BatchNorm statistics settled on the
# training films afterwards. Measured on 2 busy CPU cores (256 training films, batch 16, held-out
# films seed 1), macro AUC and test wall time: simple_cnn 0.96 in 12 s, multimodal 0.99 in 20 s,
# densenet121 0.97 in 59-63 s, fusion 1.00 in 83-87 s (most of these two the one-off trace of the
# train step), efficientnetb0 0.97 in 57-62 s (0.94-0.97 over init seeds 0-2), resnet50 0.955 in
# 70-78 s (0.93-0.96). At 32 px (a 1×1 last map) the last two reached only 0.83-0.91 in up to 126 s;
# at 48/64 px they learn several times faster per step.
LEARN = {
    "simple_cnn": (32, 20, 3e-3, 0.5),
    "multimodal": (32, 15, 3e-3, 0.5),
    "densenet121": (32, 4, 1e-3, 0.2),
    "efficientnetb0": (64, 8, 1e-3, 0.2),
    "resnet50": (48, 6, 1e-3, 0.2),
    "fusion": (32, 4, 1e-3, 0.2),
}
BATCH = 16


def inputs_for(arch, images):
    """Model inputs for uint8 films (n, S, S): float 0..255 (n, S, S, 1) (+ meta)."""
    x = images[..., None].astype("float32")
    if ARCHITECTURES[arch].multimodal:
        meta = np.tile(np.array([0.1, 1, 0, 1, 0], "float32"), (len(x), 1))
        return {"image": x, "meta": meta}
    return x


@pytest.fixture(scope="module")
def films():
    images, labels, _ = make_films(8, SIZE, seed=3)
    return images, labels


@pytest.fixture(scope="module")
def model_cache():
    return {}


@pytest.fixture(params=ARCHS)
def arch_model(request, model_cache):
    arch = request.param
    if arch not in model_cache:
        model_cache[arch] = build_model(arch, image_size=SIZE)
    return arch, model_cache[arch]


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="fusion"):
        build_model("vgg16")


def test_contract(arch_model, films):
    arch, model = arch_model
    spec = ARCHITECTURES[arch]
    names = {t.name.split(":")[0] for t in model.inputs}
    assert "image" in names and ("meta" in names) == spec.multimodal
    assert tuple(model.get_layer("features").output.shape)[0:1] == (None,)
    assert len(model.get_layer("features").output.shape) == 2
    assert len(model.get_layer(spec.gradcam_layer).output.shape) == 4
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    p = model.predict(inputs_for(arch, films[0]), verbose=0)
    assert p.shape == (8, NUM_LABELS) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))


def test_keras_round_trip(arch_model, films, tmp_path):
    arch, model = arch_model
    x = inputs_for(arch, films[0])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_savedmodel_round_trip(arch_model, films, tmp_path):
    arch, model = arch_model
    x = inputs_for(arch, films[0])
    model.export(str(tmp_path / "sm"), verbose=False)
    expected = model.predict(x, verbose=0)
    served = keras.layers.TFSMLayer(str(tmp_path / "sm"), call_endpoint="serve")(x)
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.serve(x).numpy(), expected, atol=1e-5)


def test_freeze_unfreeze(arch_model):
    arch, model = arch_model
    total = len(model.trainable_weights)
    try:
        set_backbone_trainable(model, False)
        frozen = model.trainable_weights
        head = {id(w) for layer in model.layers if not is_backbone_layer(layer) for w in layer.trainable_weights}
        assert 0 < len(frozen) < total and {id(w) for w in frozen} == head
        assert model.get_layer("predictions").trainable
        if arch == "fusion":
            assert model.get_layer("fusion_densenet_attends_mha").trainable
        set_backbone_trainable(model, True)
        bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        assert all(not bn.trainable for bn in bns)  # BN stays in inference mode when fine-tuning
        assert len(frozen) < len(model.trainable_weights) <= total
    finally:
        set_backbone_trainable(model, True, train_bn=True)
    assert len(model.trainable_weights) == total


def test_mc_dropout_samples_head_only(arch_model, films):
    arch, model = arch_model
    mc = build_model(arch, image_size=SIZE, mc_dropout=True)
    mc.set_weights(model.get_weights())
    assert any(isinstance(l, MCDropout) for l in mc.layers)
    bns = [l for l in mc.layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [w.numpy().copy() for bn in bns for w in (bn.moving_mean, bn.moving_variance)]
    x = inputs_for(arch, films[0][:2])
    a, b = np.asarray(mc(x)), np.asarray(mc(x))
    assert not np.array_equal(a, b)  # dropout in the head resamples (random-init outputs differ only slightly)
    after = [w.numpy() for bn in bns for w in (bn.moving_mean, bn.moving_variance)]
    for u, v in zip(before, after):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model(x)))  # plain model: deterministic


def test_preprocess_matches_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    rgb = np.repeat(x, 3, axis=-1)
    torch = keras.applications.densenet.preprocess_input(rgb.copy())
    caffe = keras.applications.resnet50.preprocess_input(rgb.copy())
    raw = keras.applications.efficientnet.preprocess_input(rgb.copy())
    np.testing.assert_allclose(BackbonePreprocess("torch")(x), torch, atol=1e-4)
    np.testing.assert_allclose(BackbonePreprocess("caffe")(x), caffe, atol=1e-3)
    np.testing.assert_allclose(BackbonePreprocess("raw")(x), raw, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_learns_synthetic_films(arch):
    size, epochs, lr, dropout = LEARN[arch]
    keras.utils.set_random_seed(0)
    x_train, y_train, _ = make_films(256, size, seed=0)
    x_test, y_test, _ = make_films(128, size, seed=1)  # held out: a different seed
    x_train = inputs_for(arch, x_train)
    model = build_model(arch, image_size=size, dropout=dropout)
    steps = epochs * -(-len(y_train) // BATCH)  # fit's steps: the cosine reaches 0 at the last one
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)), "binary_crossentropy",
                  jit_compile=False)
    # Build the optimizer's slots eagerly: left to fit(), they are created inside the first
    # trace of the train step, which tf.function then traces a second time (measured on
    # densenet121: first fit() 130 s -> 33 s).
    model.optimizer.build(model.trainable_variables)
    model.fit(x_train, y_train.astype("float32"), batch_size=BATCH, epochs=epochs, verbose=0)
    # A few dozen steps leave the BatchNorm moving averages (momentum 0.99) far behind the
    # weights; predict() runs on them (see settle_batch_norm).
    settle_batch_norm(model, x_train)
    p = model.predict(inputs_for(arch, x_test), verbose=0, batch_size=64)
    auc = roc_auc_score(y_test, p, average="macro")
    print(f"{arch}: held-out macro AUC {auc:.3f}")
    assert auc >= 0.9
