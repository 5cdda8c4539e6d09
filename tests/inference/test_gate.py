"""The input gate: the shipped gate meets its targets on material it never saw, and predict and its
JSON and FHIR files answer a refused film with the "not processed" result. The service's answer is
tested in tests/integration/test_serve.py, the DICOM node's refusal against Orthanc in
tests/integration/test_dicom_node.py."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_tf import gate as gate_cli
from cxr_tf import predict as predict_cli
from cxr_tf.data import negatives
from cxr_tf.inference.gate import Gate, measure
from cxr_tf.inference.predictor import Predictor

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images"


@pytest.fixture(scope="module")
def gate():
    return Gate()


def test_the_shipped_gate_meets_its_targets_on_held_out_material(gate):
    rows, _ = measure(gate, variants=2, seed=1)
    by_kind = {row["kind"].split(" (")[0]: row for row in rows}
    assert set(by_kind) == {"frontal as stored", "mirrored as stored", "frontal, varied", "mirrored, varied",
                            *(k for k in negatives.KINDS if k not in ("frontal", "mirrored"))}
    for kind, row in by_kind.items():
        assert row["n"] >= 40, row
        if kind in ("frontal, varied", "mirrored, varied"):
            # no target (docs/gate.md): 98.4-99.6 % over seeds 1-3 and 4 variants; a regression guard
            assert row["rate"] >= 0.97, row
        elif kind not in gate_cli.UNTARGETED:
            assert row["rate"] >= gate_cli.TARGETS[row["expect"]], row


def test_held_out_films_are_never_trained_on():
    trained, held_out = negatives.sample_films(held_out=False), negatives.sample_films(held_out=True)
    assert not set(trained) & set(held_out) and len(trained) + len(held_out) == 150
    official_test = set((SAMPLES.parent / "test_list.txt").read_text().split())
    assert official_test <= set(held_out)
    assert not set(negatives.pictures(held_out=True)) & set(negatives.pictures(held_out=False) if _skimage() else {})


def _skimage():
    try:
        import skimage  # noqa: F401
    except ImportError:
        return False
    return True


def _write(path, img):
    cv2.imwrite(str(path), img)
    return str(path)


@pytest.fixture(scope="module")
def refused_and_good(tmp_path_factory):
    """An inverted held-out film, a photograph, a blank picture, and a held-out film as it is."""
    folder = tmp_path_factory.mktemp("gate-films")
    film = cv2.imread(str(SAMPLES / "00000075_000.png"), cv2.IMREAD_GRAYSCALE)
    photo = negatives.pictures(held_out=True)["grace_hopper.jpg"]
    return {"inverted": _write(folder / "inverted.png", 255 - film),
            "not_radiograph": _write(folder / "photo.jpg", photo),
            "blank": _write(folder / "blank.png", np.full((256, 256), 128, np.uint8)),
            "good": _write(folder / "good.png", film)}


def test_predict_answers_refused_films_not_processed_with_the_reason(tiny_run, refused_and_good, capsys):
    files = list(refused_and_good.values())
    assert predict_cli.main(["--model", str(tiny_run), "--samples", "2", "--json", *files]) == 1
    results = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    good = results.pop("good.png")
    assert good["status"] == "processed" and good["gate"]["passed"] and good["gate"]["version"]
    for name, reason in (("inverted.png", "inverted"), ("photo.jpg", "not_radiograph"), ("blank.png", "blank")):
        r = results[name]
        assert r["status"] == "not processed" and r["reason"] == reason, r
        assert "probabilities" not in r and "triage" not in r
        assert r["error"].startswith(refused_and_good[reason]) and not r["gate"]["passed"]
        assert r["gate"]["score"] < 0.5 and set(r["gate"]["scores"]) == set(negatives.CLASSES)


def test_no_gate_is_recorded_in_every_result(tiny_run, refused_and_good, capsys):
    photo = refused_and_good["not_radiograph"]
    assert predict_cli.main(["--model", str(tiny_run), "--samples", "2", "--json", "--no-gate", photo]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["status"] == "processed" and result["gate"]["off"] is True and "--no-gate" in result["gate"]["note"]


def test_fhir_and_json_files_of_a_refused_film(tiny_run, refused_and_good, tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    out = tmp_path / "out"
    predict_cli.main(["--model", str(tiny_run), "--samples", "2", "--format", "json", "--format", "fhir", "--out", str(out),
                      refused_and_good["inverted"]])
    as_json = json.loads((out / "inverted.json").read_text())
    assert as_json["reason"] == "inverted"
    bundle = Bundle.model_validate_json((out / "inverted.fhir.json").read_text())
    [report] = [e.resource for e in bundle.entry if e.resource.__resource_type__ == "DiagnosticReport"]
    assert report.status == "cancelled" and not report.result
    assert report.conclusionCode[0].coding[0].code == "NOT_PROCESSED_INVERTED"
    assert as_json["error"] in report.conclusion
    [device] = [e.resource for e in bundle.entry if e.resource.__resource_type__ == "Device"]
    assert any(Gate().version in note.text for note in device.note)


def test_gate_command_screens_files(refused_and_good, capsys):
    assert gate_cli.main([refused_and_good["good"]]) == 0
    assert gate_cli.main([refused_and_good["good"], refused_and_good["inverted"]]) == 1
    out = capsys.readouterr().out
    assert "good.png: passes" in out and "inverted.png: refused: inverted" in out


def test_every_refusal_class_has_its_reason_in_both_tables():
    """The gate's sentence (gate.REASONS) and the short phrase of the "not processed" result
    (results.REASONS, the codes JSON, FHIR and DICOM carry) exist for every class it refuses."""
    from cxr_tf.inference import gate as gate_module
    from cxr_tf.inference import results

    refusals = set(negatives.CLASSES) - {negatives.FRONTAL}
    assert set(gate_module.REASONS) == refusals and refusals <= set(results.REASONS)
