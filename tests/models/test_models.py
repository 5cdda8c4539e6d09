"""The model zoo, looped over the registry with weights=None at small sizes:
contract (inputs, "features", "predictions", Grad-CAM layer), serialization
round trips (model.keras loaded without cxr_tf), freezing, MC dropout (learning:
tests/learning)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import inputs_for
from cxr_tf.data.labels import NUM_LABELS
from cxr_tf.models.layers import BackbonePreprocess, preprocess
from cxr_tf.inference.uncertainty import MCSampler
from cxr_tf.models import ARCHITECTURES, build_model, is_backbone_layer, model_input_spec, set_backbone_trainable
from cxr_tf.data.synthetic import make_films

SIZE = 32  # smallest size every backbone builds at (fusion: a 2×2 token grid)
ARCHS = sorted(ARCHITECTURES)



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
    assert model_input_spec(model) == (SIZE, spec.multimodal)  # the built model says what its spec says
    assert tuple(model.get_layer("features").output.shape)[0:1] == (None,)
    assert len(model.get_layer("features").output.shape) == 2
    assert len(model.get_layer(spec.gradcam_layer).output.shape) == 4
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    p = np.asarray(model(inputs_for(arch, films[0])))  # eager: a traced predict() costs seconds per model here
    assert p.shape == (8, NUM_LABELS) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))


def test_model_input_spec_needs_an_image_input():
    inputs = keras.Input((4,), name="pixels")
    with pytest.raises(ValueError, match=r"inputs \['pixels'\]: a cxr_tf model takes 'image'"):
        model_input_spec(keras.Model(inputs, keras.layers.Dense(2)(inputs), name="other"))


# Loads each file with Keras' defaults (compile=True, safe_mode=True) in a Python where any
# import of cxr_tf fails, as a user without cxr_tf would: argv = folder, then architectures.
LOAD_WITHOUT_CXR_TF = textwrap.dedent("""
    import sys
    sys.modules["cxr_tf"] = None
    try:
        import cxr_tf
    except ImportError:
        pass
    else:
        raise SystemExit("cxr_tf importable")
    import numpy as np
    import keras

    folder = sys.argv[1]
    for arch in sys.argv[2:]:
        x = dict(np.load(f"{folder}/{arch}.npz"))
        model = keras.models.load_model(f"{folder}/{arch}.keras")
        np.save(f"{folder}/{arch}.npy", np.asarray(model(x if "meta" in x else x["image"])))
""")


@pytest.fixture(scope="module")
def loaded_without_cxr_tf(model_cache, films, tmp_path_factory):
    """{arch: (predictions of the model, of its .keras file loaded without cxr_tf)} for every
    architecture, from one subprocess (one TensorFlow start for all of them)."""
    folder = tmp_path_factory.mktemp("without_cxr_tf")
    expected = {}
    for arch in ARCHS:
        if arch not in model_cache:
            model_cache[arch] = build_model(arch, image_size=SIZE)
        x = inputs_for(arch, films[0])
        x = x if isinstance(x, dict) else {"image": x}
        np.savez(folder / f"{arch}.npz", **x)
        model_cache[arch].save(folder / f"{arch}.keras")
        expected[arch] = np.asarray(model_cache[arch](x if "meta" in x else x["image"]))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CONFIG")}
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_CXR_TF, str(folder), *ARCHS], cwd=folder,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {arch: (expected[arch], np.load(folder / f"{arch}.npy")) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_keras_file_loads_without_cxr_tf(arch, loaded_without_cxr_tf):
    expected, loaded = loaded_without_cxr_tf[arch]
    np.testing.assert_allclose(loaded, expected, atol=1e-5)


# One architecture per builder family (its module) and input kind stands for the family: the three
# keras.applications backbones share their code, and the SavedModel export of a DenseNet121 costs
# ~45 s on 2 cores. The last name of a family in sorted order is taken (resnet50, the quickest of
# its family); a new family is exported without editing this file.
SAVEDMODEL_ARCHS = sorted({(spec.builder.__module__, spec.multimodal): arch
                           for arch, spec in sorted(ARCHITECTURES.items())}.values())


@pytest.mark.parametrize("arch", SAVEDMODEL_ARCHS)
def test_savedmodel_round_trip(arch, model_cache, films, tmp_path):
    if arch not in model_cache:
        model_cache[arch] = build_model(arch, image_size=SIZE)
    model = model_cache[arch]
    x = inputs_for(arch, films[0])
    model.export(str(tmp_path / "sm"), verbose=False)
    # TFSMLayer is tf.saved_model.load plus the endpoint's call: what Keras and TF users both load
    served = keras.layers.TFSMLayer(str(tmp_path / "sm"), call_endpoint="serve")(x)
    np.testing.assert_allclose(np.asarray(served), np.asarray(model(x)), atol=1e-5)


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
    assert [type(l) for l in mc.layers] == [type(l) for l in model.layers]  # plain Dropout: flag has no effect
    mc.set_weights(model.get_weights())
    assert all(type(l).__module__.startswith("keras.") for l in mc.layers)  # built-in layers only
    bns = [l for l in mc.layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [w.numpy().copy() for bn in bns for w in (bn.moving_mean, bn.moving_variance)]
    x = inputs_for(arch, films[0][:2])
    sampler = MCSampler(mc, batch_size=2)
    images, meta = (x["image"], x["meta"]) if isinstance(x, dict) else (x, None)
    a, b = sampler(images, samples=2, meta=meta)[0], sampler(images, samples=2, meta=meta)[0]
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
    image = keras.Input((8, 8, 1))
    for mode, expected, atol in (("torch", torch, 1e-4), ("caffe", caffe, 1e-3), ("raw", raw, 1e-4)):
        built_in = keras.Model(image, preprocess(image, mode, name=f"p_{mode}"))
        np.testing.assert_allclose(built_in(x), expected, atol=atol)  # same values as the old custom layer
