"""Grad-CAM: localisation on synthetic films, every architecture, overlays, NIH boxes."""

import json

import cv2
import keras
import numpy as np
import pytest

from conftest import TEST_DATA, settle_batch_norm
from cxr_tf import explain as explain_cli
from cxr_tf.inference.gradcam import (GradCAM, box_iou, cam_to_film, gradcam_layer_name, localisation_summary, localise,
                            map_status, overlay, overlay_png, pointing_hit, read_boxes, scale_box)
from cxr_tf.data.labels import LABELS, NUM_LABELS
from cxr_tf.models import ARCHITECTURES, MIN_CAM_GRID, build_model
from cxr_tf.data.synthetic import make_films

BOXES = TEST_DATA / "nih" / "BBox_List_2017.csv.gz"
SAMPLE_IMAGES = TEST_DATA / "nih-sample" / "images_001" / "images"
SIZE = 64


def blob_detector(size):
    """A model in the cxr_tf layout whose evidence is known by construction: a 5 x 5
    mean-brightness detector (ReLU above mid-grey) on the Grad-CAM layer ``blob_map``,
    global pooling, a positive head. Its map must peak on the bright planted shape."""
    image = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    conv = keras.layers.Conv2D(4, 5, padding="same", activation="relu", name="blob_map")
    features = keras.layers.GlobalAveragePooling2D(name="features")(conv(x))
    dense = keras.layers.Dense(NUM_LABELS, activation="sigmoid", name="predictions")
    model = keras.Model(image, dense(keras.layers.Dropout(0.5)(features)))
    conv.set_weights([np.full((5, 5, 1, 4), 1 / 25, np.float32), np.full(4, -0.5, np.float32)])
    dense.set_weights([np.ones((4, NUM_LABELS), np.float32), np.full(NUM_LABELS, -1.0, np.float32)])
    return model


def single_finding_films(size, seed=1):
    """Synthetic films that carry exactly one planted finding (about 1 in 100 do)."""
    images, labels, boxes = make_films(3000, size, seed=seed)
    one = labels.sum(axis=1) == 1
    return images[one], labels[one], boxes


def score(maps, labels, boxes, size):
    on_film = [[cam_to_film(m, (size, size)) for m in film_maps] for film_maps in maps]
    film_boxes = [{LABELS[k]: [tuple(boxes[k])] for k in np.flatnonzero(row)} for row in labels]
    return localisation_summary(localise(on_film, film_boxes, LABELS))


def test_gradcam_maps_point_where_the_evidence_is():
    images, labels, boxes = single_finding_films(SIZE)
    assert len(images) >= 20
    maps, probs = GradCAM(blob_detector(SIZE), layer="blob_map").cams(images, LABELS)
    assert maps.shape == (len(images), NUM_LABELS, SIZE, SIZE) and probs.shape == (len(images), NUM_LABELS)
    summary = score(maps, labels, boxes, SIZE)
    assert summary["all"]["n"] == len(images)
    assert summary["all"]["hit_rate"] >= 0.9, summary
    assert summary["all"]["mean_iou"] > 0.3, summary


def test_gradcam_points_at_planted_findings_after_short_training():
    # Labels are drawn independently, so the only pixels that tell finding k apart are
    # those in its box: a map that peaks elsewhere is wrong about the model's evidence.
    # Scored per finding on the films where it is present, among the film's other
    # findings (about 5 a film). 64 px: the Grad-CAM layer (conv3_relu) is a 16 x 16 grid
    # there, finer than the 12 px boxes (at 32 px, an 8 x 8 grid, peaks miss 6 px boxes).
    keras.utils.set_random_seed(0)
    images, labels, boxes = make_films(300, SIZE, seed=0)
    model = build_model("simple_cnn", image_size=SIZE, weights=None, dropout=0.2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(images[..., None].astype(np.float32), labels.astype(np.float32), batch_size=16, epochs=10, verbose=0)
    settle_batch_norm(model, images[:128, ..., None].astype(np.float32))
    test_images, test_labels, _ = make_films(42, SIZE, seed=1)
    maps, _ = GradCAM(model, arch="simple_cnn").cams(test_images, LABELS)
    summary = score(maps, test_labels, boxes, SIZE)
    print("simple_cnn Grad-CAM localisation on synthetic films:", summary["all"])
    assert summary["all"]["n"] == test_labels.sum()
    assert summary["all"]["hit_rate"] >= 0.9, summary


@pytest.fixture(scope="module")
def small_models():
    """Every registered architecture at 32 px (its smallest size; weights=None)."""
    return {name: (build_model(name, image_size=32, weights=None), 32) for name in ARCHITECTURES}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_gradcam_runs_for_every_architecture(small_models, arch):
    model, size = small_models[arch]
    name = gradcam_layer_name(model, arch)
    assert name in ARCHITECTURES[arch].gradcam_layers
    meta = np.zeros((2, 5), np.float32) if ARCHITECTURES[arch].multimodal else None
    images = np.random.default_rng(0).integers(0, 256, (2, size, size)).astype(np.uint8)
    maps, probs = GradCAM(model, arch=arch).cams(images, ["Effusion", "Pneumothorax"], meta=meta)
    grid = tuple(model.get_layer(name).output.shape[1:3])
    assert maps.shape == (2, 2, *grid) and probs.shape == (2, NUM_LABELS)
    assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1
    assert cam_to_film(maps[0, 0], (300, 200)).shape == (300, 200)
    # issue 18: at its smallest size every architecture's map is fine enough to localise
    # and shows a place (this model is just built; the trained case: test_trust.py)
    assert min(grid) >= MIN_CAM_GRID
    statuses = [map_status(m) for film in maps for m in film]
    assert "ok" in statuses and "coarse" not in statuses and "flat" not in statuses, statuses


def test_cam_to_film_undoes_square_padding():
    # a film 100 high, 200 wide is padded to 200 x 200 (50 rows above and below)
    cam = np.zeros((20, 20), np.float32)
    cam[10, 15] = 1.0  # square pixel (row 105, col 155) -> film (55, 155)
    on_film = cam_to_film(cam, (100, 200))
    assert on_film.shape == (100, 200)
    row, col = np.unravel_index(np.argmax(on_film), on_film.shape)
    assert abs(row - 55) <= 5 and abs(col - 155) <= 5


def test_pointing_iou_and_summary():
    cam = np.zeros((100, 100))
    cam[20:40, 30:50] = 1.0
    cam[30, 40] = 2.0
    assert pointing_hit(cam, (30, 20, 20, 20)) and not pointing_hit(cam, (60, 60, 20, 20))
    assert not pointing_hit(np.zeros((10, 10)), (0, 0, 10, 10))
    assert box_iou(cam / 2, (30, 20, 20, 20), threshold=0.4) == pytest.approx(1.0, abs=0.12)
    assert box_iou(cam, (60, 60, 20, 20)) == 0.0
    rows = [{"finding": "Mass", "hit": True, "iou": 0.5}, {"finding": "Mass", "hit": False, "iou": 0.1},
            {"finding": "Atelectasis", "hit": True, "iou": 0.3}]
    summary = localisation_summary(rows)
    assert list(summary) == ["Atelectasis", "Mass", "all"]
    assert summary["Mass"] == {"n": 2, "hit_rate": 0.5, "mean_iou": pytest.approx(0.3)}
    assert summary["all"]["hit_rate"] == pytest.approx(2 / 3)


def test_overlay_png_and_nih_boxes():
    film = np.full((120, 80), 100, np.uint8)
    cam = np.zeros((120, 80), np.float32)
    cam[60, 40] = 1.0
    image = overlay(film, cam)
    assert image.shape == (120, 80, 3) and image.dtype == np.uint8
    assert np.all(image[0, 0] == 100) and np.any(image[60, 40] != 100)  # plain film where the map is 0
    decoded = cv2.imdecode(np.frombuffer(overlay_png(film, cam, "Mass p=0.90", max_side=60), np.uint8), 1)
    assert decoded.shape == (60, 40, 3)
    with pytest.raises(ValueError, match="cam_to_film"):
        overlay(film, np.zeros((10, 10)))
    boxes = read_boxes(BOXES)
    assert len(boxes) == 984 and "Infiltration" in set(boxes["label"]) and set(boxes["label"]) <= set(LABELS)
    assert scale_box((512, 256, 100, 50), (512, 512)) == (256, 128, 50, 25)


def test_explain_command_scores_nih_boxes(tiny_run, tmp_path, capsys):
    boxes = read_boxes(BOXES)
    boxed = sorted(p for p in SAMPLE_IMAGES.glob("*.png") if p.name in set(boxes["image_index"]))[:2]
    assert boxed, "the NIH sample has films with radiologist boxes"
    plain = next(p for p in sorted(SAMPLE_IMAGES.glob("*.png")) if p not in boxed)
    out = tmp_path / "cams"
    code = explain_cli.main(["--model", str(tiny_run), "--out", str(out), "--boxes", str(BOXES),
                         *map(str, boxed), str(plain), str(tmp_path / "missing.png"), "--findings", "Mass"])
    assert code == 1  # the missing film
    report = json.loads((out / "explain.json").read_text())
    entries = {e["file"]: e for e in report["films"]}
    assert "error" in entries[str(tmp_path / "missing.png")]
    for film in boxed:
        entry = entries[str(film)]
        for finding in set(boxes[boxes["image_index"] == film.name]["label"]):
            assert finding in entry["overlays"] and (out / f"{film.stem}_{finding}.png").is_file()
        assert entry["localisation"] and all(0 <= r["iou"] <= 1 for r in entry["localisation"])
    assert list(entries[str(plain)]["overlays"]) == ["Mass"] and not entries[str(plain)]["localisation"]
    assert report["localisation"]["all"]["n"] == sum(len(entries[str(f)]["localisation"]) for f in boxed)
    assert "localisation all:" in capsys.readouterr().out
