"""Film reading (DICOM, PNG, JPEG, bad files), triage rules and the predict command."""

import io
import json
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import FULL_SIZE_FILMS, twelve_bit_film, write_run_dir
from cxr_tf import predict as predict_cli
from cxr_tf.data.labels import LABELS
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.readers import FilmError, Limits, read_film, sniff_format
from cxr_tf.inference.triage import NO_FINDING_MESSAGE, UNSURE_MESSAGE, triage, worklist

FILMS = FULL_SIZE_FILMS
RESULT_KEYS = {"file", "status", "probabilities", "uncertainty", "findings", "borderline", "triage", "message",
               "caveats", "gate"}
UNREAD_KEYS = {"file", "status", "reason", "error"}


# ------------------------------------------------------------------ test files

def make_dicom(pixels, photometric="MONOCHROME2", bits_stored=12, **tags):
    """DICOM Part 10 bytes of a uint16 greyscale film, written by pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("film.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bars(height=96, width=128):
    """uint16 film: left half 0, right half 4000, a 1000 patch top-left (12-bit values)."""
    px = np.zeros((height, width), np.uint16)
    px[:, width // 2:] = 4000
    px[:16, :16] = 1000
    return px


def png(array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def bomb_png(width=60000, height=60000):
    """A valid PNG header claiming width × height pixels with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ readers

def test_dicom_monochrome1_16bit_is_inverted_and_scaled():
    data = make_dicom(bars(), "MONOCHROME1", PatientAge="058Y", PatientSex="F", ViewPosition="AP")
    assert sniff_format(data) == "dicom"
    film = read_film(data, name="m1.dcm")
    assert film.fmt == "dicom" and film.pixels.dtype == np.uint8 and film.pixels.shape == (96, 128)
    # no window: 0..4000 stretched to 0..255, then MONOCHROME1 (0 = white) inverted
    assert film.pixels[50, 0] == 255 and film.pixels[50, 100] == 0
    assert film.pixels[0, 0] == 255 - round(1000 * 255 / 4000)
    assert (film.age, film.sex, film.view) == (58.0, "F", "AP")


def test_dicom_rescale_and_window_applied():
    # stored s, rescale to 2*s - 1000: 0 -> -1000, 1000 -> 1000, 4000 -> 7000; window 500..1500
    data = make_dicom(bars(), RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=1000)
    film = read_film(data, name="w.dcm")
    assert film.pixels[50, 0] == 0 and film.pixels[50, 100] == 255
    assert abs(int(film.pixels[0, 0]) - 128) <= 1  # the patch sits at the window centre
    assert (film.age, film.sex, film.view) == (None, None, None)


def test_png_jpeg_and_16bit_png_read_by_content_not_extension(tmp_path):
    grey = np.tile(np.arange(128, dtype=np.uint8), (96, 1))
    (tmp_path / "film.dcm").write_bytes(png(grey))  # a PNG with a misleading name
    film = read_film(tmp_path / "film.dcm")
    assert film.fmt == "png" and np.array_equal(film.pixels, grey)
    ok, jpg = cv2.imencode(".jpg", grey)
    film = read_film(jpg.tobytes(), name="film.png")
    assert film.fmt == "jpeg" and np.abs(film.pixels.astype(int) - grey).max() <= 8
    film = read_film(png(grey.astype(np.uint16) * 200), name="deep.png")
    assert film.pixels.dtype == np.uint8 and film.pixels.max() == 255 and film.pixels.min() == 0


@pytest.mark.parametrize("name, data, reason", [
    ("empty.png", b"", "empty"),
    ("notes.png", b"this is a report, not a film\n" * 20, "not a PNG, JPEG or DICOM"),
    ("truncated.png", None, "truncated"),
    ("tiny.png", png(np.zeros((16, 16), np.uint8)), "too small"),
    ("bomb.png", bomb_png(), "decompression"),
    ("strip.png", png(np.zeros((64, 600), np.uint8)), "aspect"),
    ("huge.dcm", make_dicom(np.zeros((64, 64), np.uint16), Rows=20000, Columns=20000), "exceeds"),
])
def test_bad_files_raise_film_error_naming_file(name, data, reason):
    if data is None:
        data = FILMS[0].read_bytes()[:4000]
    with pytest.raises(FilmError, match=reason) as err:
        read_film(data, name=name)
    assert name in str(err.value)


def test_file_size_limit_and_missing_file(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(FILMS[0].read_bytes())
    with pytest.raises(FilmError, match="file-size limit"):
        read_film(path, limits=Limits(max_bytes=1000))
    with pytest.raises(FilmError, match="no such file"):
        read_film(tmp_path / "missing.png")


# ------------------------------------------------------------------ triage rules

def verdict(probs=None, stds=None, **kw):
    p = {f: 0.05 for f in LABELS}
    p.update(probs or {})
    s = {f: 0.01 for f in LABELS}
    s.update(stds or {})
    return triage(p, s, {f: 0.5 for f in LABELS}, uncertainty_threshold=0.1, **kw)


def test_triage_rules():
    routine = verdict()
    assert routine["triage"]["level"] == "routine" and routine["message"] == NO_FINDING_MESSAGE
    assert routine["findings"] == []
    urgent = verdict({"Pneumothorax": 0.9, "Effusion": 0.7})
    assert urgent["triage"]["level"] == "urgent" and urgent["findings"] == ["Pneumothorax", "Effusion"]
    assert "Pneumothorax" in urgent["message"]
    review = verdict({"Effusion": 0.7})
    assert review["triage"]["level"] == "review" and review["findings"] == ["Effusion"]
    # nothing above threshold but the model is unsure: never "no finding"
    unsure = verdict(stds={"Mass": 0.2})
    assert unsure["triage"]["level"] == "review" and unsure["message"] == UNSURE_MESSAGE
    # a critical finding the model is unsure about is a review naming it, not urgent
    shaky = verdict({"Pneumothorax": 0.6}, {"Pneumothorax": 0.2})
    assert shaky["triage"]["level"] == "review" and "possible Pneumothorax" in shaky["message"]
    # configurable critical findings; unknown names refused
    assert verdict({"Pneumonia": 0.8}, critical=("Pneumonia",))["triage"]["level"] == "urgent"
    assert verdict({"Pneumonia": 0.8})["triage"]["level"] == "review"
    with pytest.raises(ValueError, match="Pneumonitis"):
        verdict(critical=("Pneumonitis",))
    assert all(v["triage"]["action"] for v in (routine, urgent, review, unsure))


def test_worklist_orders_by_urgency():
    def result(name, probs=None, stds=None):
        return {"file": name, "probabilities": {**{f: 0.05 for f in LABELS}, **(probs or {})},
                "uncertainty": {f: 0.01 for f in LABELS}, **verdict(probs, stds)}

    items = [result("routine"), {"file": "broken", "error": "x"}, result("review", {"Mass": 0.7}),
             result("possible", {"Pneumothorax": 0.6}, {"Pneumothorax": 0.3}),
             result("urgent", {"Pneumothorax": 0.95})]
    assert [r["file"] for r in worklist(items)] == ["urgent", "possible", "review", "broken", "routine"]


# ------------------------------------------------------------------ predictor and command

@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Good and bad films on disk: {name: path}."""
    folder = tmp_path_factory.mktemp("films")
    files = {
        "nih.png": FILMS[0].read_bytes(),
        "film.jpg": cv2.imencode(".jpg", cv2.imread(str(FILMS[1]), cv2.IMREAD_GRAYSCALE))[1].tobytes(),
        "m1.dcm": make_dicom(twelve_bit_film(192, 160, inverted=True, index=3), "MONOCHROME1", PatientSex="M",
                             ViewPosition="PA"),
        "truncated.png": FILMS[2].read_bytes()[:3000],
        "notes.txt": b"not a film\n",
        "empty.png": b"",
        "tiny.png": png(np.zeros((8, 8), np.uint8)),
        "bomb.png": bomb_png(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


GOOD = ("nih.png", "film.jpg", "m1.dcm")


def test_predict_schema_and_per_file_errors(tiny_run, films):
    predictor = Predictor(tiny_run, samples=5)
    answers = predictor.predict(list(films.values()))
    assert all(a.ok == (name in GOOD) for name, a in zip(films, answers))
    results = [a.as_dict() for a in answers]
    assert [r["file"] for r in results] == [str(p) for p in films.values()]  # input order
    for name, result in zip(films, results):
        if name in GOOD:
            assert set(result) == RESULT_KEYS
            assert list(result["probabilities"]) == list(LABELS) == list(result["uncertainty"])
            assert all(0 <= v <= 1 for v in result["probabilities"].values())
            assert all(v >= 0 for v in result["uncertainty"].values())
            assert result["triage"]["level"] in ("urgent", "review", "routine")
            assert set(result["findings"]) <= set(LABELS) and result["message"] and result["triage"]["action"]
        else:
            assert set(result) == UNREAD_KEYS and name in result["error"] and result["reason"] == "unreadable"
    json.dumps(results)  # JSON-serialisable as is
    # bytes in (name, data), a Film already read: same answer, to the last bit (seeded per film)
    one, read = predictor.predict([("nih.png", films["nih.png"].read_bytes()), predictor.read(films["nih.png"])])
    assert set(one.as_dict()) == RESULT_KEYS and one.file == "nih.png"
    assert one.probabilities == results[0]["probabilities"] == read.probabilities
    [bad] = predictor.predict([("x.png", b"garbage")])
    assert set(bad.as_dict()) == UNREAD_KEYS and bad.file == "x.png" and not bad.ok


def test_images_and_describe(tiny_run):
    # thresholds 0 make every finding positive, so every finding gets an overlay
    predictor = Predictor(tiny_run, samples=3)
    predictor.thresholds = {f: 0.0 for f in LABELS}
    [answer] = predictor.predict([(FILMS[0].name, FILMS[0].read_bytes())])
    result = predictor.add_images(answer).as_dict()
    assert result["images"]["film"].startswith("data:image/png;base64,")
    assert set(result["images"]["gradcam"]) == set(result["findings"]) == set(LABELS)
    info = predictor.describe()
    assert info["arch"] == "simple_cnn" and info["labels"] == list(LABELS)
    assert info["thresholds_source"] == "thresholds.json" and info["critical"] == ["Pneumothorax"]


def test_missing_thresholds_default_to_half_and_say_so(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "thresholds.json").unlink()
    predictor = Predictor(run, samples=2)
    assert predictor.thresholds == {f: 0.5 for f in LABELS}
    assert any("thresholds.json not found" in note for note in predictor.notes)
    assert predictor.describe()["thresholds_source"] == "default"


def test_command_json_worklist_gradcam_and_exit_code(tiny_run, films, tmp_path, capsys):
    good = [str(films[n]) for n in GOOD]
    out = tmp_path / "cams"
    code = predict_cli.main(["--model", str(tiny_run), "--json", "--samples", "4",
                             "--gradcam", str(out), *good, str(films["truncated.png"])])
    assert code == 1  # one film failed
    body = json.loads(capsys.readouterr().out)
    assert len(body) == 4 and sum("error" in r for r in body) == 1
    ranks = {"urgent": 0, "review": 1, "routine": 3}
    order = [2 if "error" in r else ranks[r["triage"]["level"]] for r in body]
    assert order == sorted(order)
    positives = sum(len(r.get("findings", [])) for r in body)
    assert len(list(out.glob("*.png"))) == positives
    assert predict_cli.main(["--model", str(tiny_run), "--samples", "2", *good]) == 0
    table = capsys.readouterr().out
    assert "LEVEL" in table and all(n in table for n in GOOD)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", str(tiny_run), good[0], "--critical", "Pneumonitis"])
    assert exit_info.value.code == 2 and "Pneumonitis" in capsys.readouterr().err


def test_multimodal_meta_from_dicom_tags(tmp_path):
    from cxr_tf.models import build_model
    from cxr_tf.data.synthetic import write_synthetic_records

    records = tmp_path / "records"
    write_synthetic_records(records, 4, 2, 0, 64, seed=0)
    model = build_model("multimodal", image_size=64, weights=None, dropout=0.5)
    run = write_run_dir(tmp_path / "run", model, "multimodal", 64, records=str(records))
    predictor = Predictor(run, samples=3)
    film = twelve_bit_film(96, 128)
    male, female, png = predictor.predict([make_dicom(film, PatientAge="070Y", PatientSex="M", ViewPosition="PA"),
                                           make_dicom(film, PatientSex="F", ViewPosition="AP"), FILMS[0]])
    assert male.meta.shape == (1, 5) and male.meta[0, 1:].tolist() == [1, 0, 1, 0]
    assert female.meta[0, 1:].tolist() == [0, 1, 0, 1] and female.meta[0, 0] == pytest.approx(0.0)  # age -> mean
    assert set(png.as_dict()) == RESULT_KEYS
