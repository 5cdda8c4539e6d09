"""Imported networks agree with PyTorch, without PyTorch: each fixture (``tools/make_import_fixtures.py``,
made with torch) holds a reduced network of one layout ``import_weights`` reads, the source
pipeline's tensor of real full-size films and PyTorch's logits on it. The Keras network must give
the same logits on that tensor (relative 1e-4), our film preparation must give the same tensor
(``cxr_tf.data.film_resize``), and a raw film must reach the same probabilities end to end (2e-3).
The full-size networks (DenseNet121, ResNet50 at 512, both CheXNet layouts) are compared with
PyTorch itself in ``test_torch_import.py`` where torch is installed."""

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.data.film_resize import prepare
from cxr_tf.data.images import read_image
from cxr_tf.models import imported, published
from cxr_tf.training import importer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FILMS = Path(__file__).resolve().parents[1] / "fixtures" / "nih-sample" / "images_001" / "images"
LAYOUTS = sorted(published.LAYOUTS)


def load_fixture(layout):
    """(state dict with the layout's own key names, meta, source tensor (N, C, S, S), PyTorch logits)."""
    data = np.load(FIXTURES / f"{layout}.npz")
    state = {k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")}
    return state, json.loads(str(data["meta"])), data["source"], data["logits"]


def test_there_is_a_fixture_for_every_layout():
    assert sorted(p.stem for p in FIXTURES.glob("*.npz")) == LAYOUTS
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.npz")) < 1_000_000


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_network_gives_pytorchs_logits(layout):
    state, meta, source, expected = load_fixture(layout)
    spec = published.LAYOUTS[layout]
    net, config = imported.convert(state, meta["image_size"], spec.preprocessing, spec.prefixes, spec.classifier,
                                   source_space=True)
    assert config.family == spec.family
    logits = net.predict(np.transpose(source, (0, 2, 3, 1)), verbose=0)
    assert expected.std() > 0.5  # the outputs spread: saturated sigmoids would hide errors
    assert np.abs(logits - expected).max() / np.abs(expected).max() <= importer.LOGIT_TOLERANCE


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_raw_film_reaches_pytorchs_probabilities(layout):
    state, meta, source, expected = load_fixture(layout)
    spec = published.LAYOUTS[layout]
    size = meta["image_size"]
    pixels = np.stack([prepare(read_image(FILMS / name), size, spec.resize) for name in meta["films"]])[..., None]
    # our preparation of the film is the source pipeline's tensor (float32 rounding apart)
    np.testing.assert_allclose(importer_space(pixels, spec.preprocessing), source, atol=2e-3)
    model, _ = importer.build_model(state, layout, meta["labels"], size)
    probabilities = model.predict(pixels, verbose=0)
    reference = 1 / (1 + np.exp(-expected.astype(np.float64)))
    assert reference.std(axis=0).mean() > 0.1
    assert np.abs(probabilities - reference).max() <= importer.PROB_TOLERANCE


def importer_space(pixels, preprocessing):
    """What the model's preprocess layer makes of 0..255 pixels, as (N, C, S, S)."""
    x = pixels[..., 0].astype(np.float64)
    if preprocessing == "xrv":
        return (x / 255 * 2048 - 1024)[:, None]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return (x[:, None] / 255 - mean[None, :, None, None]) / std[None, :, None, None]


def test_a_checkpoint_of_another_shape_is_one_error_listing_the_tensors():
    state, meta, _, _ = load_fixture("xrv-densenet")
    cut = {k: v for k, v in state.items() if "denselayer2.conv2" not in k}
    with pytest.raises(imported.CheckpointMismatch) as err:
        importer.build_model(cut, "xrv-densenet", meta["labels"], 64)
    text = str(err.value)
    assert "expected: features.conv0.weight (8, 1, 7, 7)" in text
    assert "features.denseblock1.denselayer2.conv2.weight: missing" in text
    wrong = dict(state, **{"features.norm5.weight": np.ones(3, np.float32)})
    with pytest.raises(imported.CheckpointMismatch, match=r"features.norm5.weight: \(3,\), expected \(\d+,\)"):
        importer.build_model(wrong, "xrv-densenet", meta["labels"], 64)
    with pytest.raises(imported.CheckpointMismatch, match="neither a torchvision DenseNet nor a bottleneck ResNet"):
        imported.infer_config({"encoder.weight": np.zeros((3, 3))})


def test_old_torchvision_key_names_and_prefixes_are_read():
    keys = imported.canonical_keys({"module.densenet121.features.denseblock1.denselayer1.norm.1.weight": np.ones(2),
                                    "module.densenet121.features.norm0.num_batches_tracked": np.array(3)},
                                   ("module.densenet121.",))
    assert list(keys) == ["features.denseblock1.denselayer1.norm1.weight"]
