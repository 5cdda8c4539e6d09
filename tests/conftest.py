"""Shared test fixtures and the suite's layout.

The tests follow the package, one folder per stage: ``data/``, ``models/``, ``training/``,
``evaluation/``, ``inference/``, ``integration/`` (front ends and whole paths against real
peers), and ``learning/`` (every architecture learns; collected first, see
``pytest_collection_modifyitems``). ``fixtures/`` holds the real NIH slice (not tests)."""

import os
from pathlib import Path

import numpy as np
import pytest

# As many workers as cores (CI: -n 2 on 2 cores): each worker's TensorFlow, and the commands the
# tests start, compute an op on one thread instead of one per core, so two workers do not fight
# over the cores (TensorFlow reads this when it starts). Two learning trainings side by side on 2
# cores: 101 s with TensorFlow's default, 92 s with this (2026-11-29).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

# Real NIH material shipped with the repository (tests/fixtures/README.md): the full label table,
# the box list, the sample's table in both layouts and 7 of its films at full size.
TEST_DATA = Path(__file__).resolve().parent / "fixtures"
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


def synthetic_records_folder(tmp_path_factory, name, n_train, n_val, n_test, seed):
    """A records folder of synthetic planted-finding films at 32 px (``cxr_tf.data.synthetic``),
    made under pytest's temporary root: what the training tests' fixtures share."""
    from cxr_tf.data.synthetic import write_synthetic_records

    out = tmp_path_factory.mktemp(name)
    write_synthetic_records(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=32, seed=seed)
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


@pytest.fixture(scope="session")
def two_positive_run(tiny_run, tmp_path_factory):
    """A copy of ``tiny_run`` whose thresholds call Effusion and Mass positive on every film
    (threshold 0.0) and nothing else (1.0). The untrained model's probabilities sit near 0.5
    (0.46..0.55, MC std <= 0.03 measured), so with 0.5 thresholds whether a film has any
    positive finding, and so any heatmap to check, was chance (a CI failure)."""
    import shutil

    from cxr_tf import runs
    from cxr_tf.data.labels import LABELS

    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("two_positive") / "run"))
    runs.write_thresholds({f: 0.0 if f in ("Effusion", "Mass") else 1.0 for f in LABELS}, run / runs.THRESHOLDS)
    return run


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


# arch: (image size, epochs, peak learning rate, head dropout) for the learning test: Adam, the
# learning rate decayed to 0 along a cosine over the run, BatchNorm statistics settled on the
# training films afterwards. Measured (256 training films, batch 16, held-out films seed 1), macro
# AUC: simple_cnn 0.96 (0.91 at 14 epochs), multimodal 0.99 (0.95 at 10), densenet121 0.96 (0.93 at
# 2 epochs, 0.98 at 4), fusion 0.98 (0.93 at 2, 1.00 at 4), efficientnetb0 0.956 (0.94 at 5 epochs
# and learning rate 2e-3, 0.97 at 8; 0.94-0.97 over init seeds 0-2), resnet50 0.97 at 40 px (0.955
# at 48 px, 0.92 there at 5 epochs; 0.87 at 32 px). Most of densenet121's and fusion's time is the
# one-off trace of the train step (densenet121 on a quiet core: 37 s of trace, 0.26 s a step). At
# 32 px (a 1×1 last map) efficientnetb0 and resnet50 reached only 0.83-0.91; at 40-64 px (a 2×2
# map) they learn several times faster per step.
LEARN = {
    "simple_cnn": (32, 20, 3e-3, 0.5),
    "multimodal": (32, 15, 3e-3, 0.5),
    "densenet121": (32, 3, 1e-3, 0.2),
    "efficientnetb0": (64, 6, 1e-3, 0.2),
    "resnet50": (40, 6, 1e-3, 0.2),
    "fusion": (32, 3, 1e-3, 0.2),
}
BATCH = 16


def inputs_for(arch, images):
    """Model inputs for uint8 films (n, S, S): float 0..255 (n, S, S, 1) (+ meta)."""
    x = images[..., None].astype("float32")
    from cxr_tf.models import ARCHITECTURES

    if ARCHITECTURES[arch].multimodal:
        meta = np.tile(np.array([0.1, 1, 0, 1, 0], "float32"), (len(x), 1))
        return {"image": x, "meta": meta}
    return x


@pytest.fixture(scope="session")
def learned():
    """``learned(arch)`` -> (model, image size, held-out films uint8 (128, S, S), labels (128, 14)):
    the registry model of ``arch`` trained once per session on 256 synthetic films (``LEARN``
    settings; BatchNorm statistics settled), shared by every test that needs a model that has
    learned something (learning, Grad-CAM)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = _learn(arch)
        return cache[arch]

    return get


def _learn(arch):
    import keras

    from cxr_tf.data.synthetic import make_films
    from cxr_tf.models import build_model

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
    return model, size, x_test, y_test


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory):
    """A run folder (Path) of ``simple_cnn`` at 32 px trained by ``cxr_tf.training.trainer.train``
    for 8 epochs (batch 16, binary cross-entropy) on synthetic planted-finding records (384
    train, 96 val, 32 test films, ``cxr_tf.data.synthetic``; augmentation off), so it has
    learned something (val macro AUC about 0.75-0.8 in ~40 s on 2 busy cores) and its config names its records folder (for exports' parity).
    Every trainer output is there, ``savedmodel/`` included. Read-only."""
    from cxr_tf.data.synthetic import write_synthetic_records
    from cxr_tf.training import config as config_lib
    from cxr_tf.training.trainer import train

    root = tmp_path_factory.mktemp("learned_run")
    write_synthetic_records(root / "records", n_train=384, n_val=96, n_test=32, image_size=32, seed=0)
    config = config_lib.load_config("simple_cnn", overrides={
        "records": str(root / "records"), "out": str(root / "runs"), "image_size": 32, "batch_size": 16,
        "loss.name": "bce", "verbose": 0, "augment": False, "phases.0.epochs": 8, "phases.0.learning_rate": 2e-3,
        "early_stopping.patience": 8, "reduce_lr.patience": 8})
    return train(config)


def twelve_bit_film(rows, cols, inverted=False, index=0):
    """A real sample film as uint16 (rows, cols) 12-bit values (bone bright; ``inverted``: stored
    the MONOCHROME1 way, bone dark)."""
    import cv2

    film = cv2.imread(str(FULL_SIZE_FILMS[index]), cv2.IMREAD_GRAYSCALE)
    film = cv2.resize(film, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    return 4095 - film if inverted else film


def twelve_bit_dicom(rows=96, cols=128, photometric="MONOCHROME2", text=None, **tags):
    """Part 10 bytes of a 12-bit film (a real sample film resized to rows x cols, so the input gate
    passes it; stored inverted for MONOCHROME1), written by pydicom; ``text``: {keyword: value}
    written with VR LO (text), as some modalities do."""
    import io

    import pydicom
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("film.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex, ds.PatientAge, ds.ViewPosition = "DX", "F", "058Y", "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    for key, value in (text or {}).items():
        tag = pydicom.datadict.tag_for_keyword(key)
        ds[tag] = DataElement(tag, "LO", value)
    ds.PixelData = twelve_bit_film(rows, cols, inverted=photometric == "MONOCHROME1").astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pytest_collection_modifyitems(session, config, items):
    """The learning tests (``tests/learning/``, the longest file) first, the rest in folder order:
    pytest-xdist hands files out in collection order (``--no-loadscope-reorder``, setup.cfg), so
    one worker starts the long file at once while the other runs the rest."""
    learning = Path(__file__).resolve().parent / "learning"
    items.sort(key=lambda item: learning not in Path(str(item.path)).parents)
