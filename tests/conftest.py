"""Shared test fixtures. Add fixtures here; never rewrite another issue's fixture."""

from pathlib import Path

import pytest

# Real NIH material shipped with the repository (tests/data/README.md): the full label table,
# the box list, the sample's table in both layouts and 7 of its films at full size.
TEST_DATA = Path(__file__).resolve().parent / "data"
FULL_SIZE_FILMS = sorted((TEST_DATA / "nih-sample" / "images_001" / "images").glob("*.png"))


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory):
    """Records built by ``cxr_tf.data.builder.build_records`` from the 150 real NIH films
    of the embedded sample (``cxr_tf/sample``, 128 px) at 64 px, stratified split, seed 0. Returns the records folder (Path) holding
    ``{split}-*.tfrecord`` and ``manifest.json``. Read-only: do not write into it."""
    from cxr_tf.data.builder import build_records

    out = tmp_path_factory.mktemp("sample_records")
    build_records(data_dir=None, out=out, image_size=64, seed=0, workers=2, progress=False)
    return out


def write_run_dir(run_dir, model, arch, image_size, thresholds=None, **config):
    """Write a run folder in the layout of ``cxr_tf.runs`` that ``Predictor`` reads: model.keras,
    config.json ({"arch", "image_size", ...config}), labels.json (NIH's 14) and, unless
    ``thresholds`` is False, thresholds.json (default 0.5 per finding)."""
    from cxr_tf import runs
    from cxr_tf.data.labels import LABELS

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / runs.MODEL)
    runs.write_config(run_dir, {"arch": arch, "image_size": image_size, **config})
    runs.write_labels(run_dir, LABELS)
    if thresholds is not False:
        runs.write_thresholds(thresholds or {label: 0.5 for label in LABELS}, run_dir / runs.THRESHOLDS)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder (Path) with an untrained ``simple_cnn`` at 64 px (dropout 0.5,
    weights=None), thresholds 0.5, split_method "synthetic": the fit layout that
    ``cxr_tf.inference.predictor.Predictor`` loads. Read-only: copy it to change files."""
    from cxr_tf.models import build_model

    model = build_model("simple_cnn", image_size=64, weights=None, dropout=0.5)
    return write_run_dir(tmp_path_factory.mktemp("tiny_run"), model, "simple_cnn", 64,
                         split_method="synthetic")


def settle_batch_norm(model, inputs):
    """Set every BatchNormalization layer's moving mean/variance to the statistics of
    ``inputs`` (what ``model`` takes: an image batch, or a dict with "meta") under the
    trained weights: one forward pass in training mode with momentum 0. Returns the model.

    After a short training (tens to a few hundred steps at Keras' momentum 0.99) the
    moving averages still lag the weights, so the inference-mode network that
    predict and Grad-CAM run differs from the trained one. Measured: the Grad-CAM
    test in test_explain.py, macro AUC 0.92 and hit rate 0.45 without this, 0.99 and
    1.0 with it; the learning tests in test_models.py, held-out macro AUC resnet50
    0.89 -> 0.96, efficientnetb0 0.80 -> 0.97, densenet121 0.88 -> 0.97. Long
    trainings do not need this."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(inputs, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return model
