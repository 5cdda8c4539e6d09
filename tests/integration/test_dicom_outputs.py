"""The three encodings of a triage result (DICOM SR, Grad-CAM Secondary Capture, FHIR
Bundle) from ``predict --format``, their conformance (dciodvfy, fhir.resources), the
service's ``?format=fhir``, and which films the DICOM node accepts."""

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle

from cxr_tf import predict as predict_cli
from cxr_tf.data.labels import LABELS
from cxr_tf.inference.dicom_node import Destination, chest_problem
from cxr_tf.inference.outputs.dicom_sr import read_sr
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.testing import LiveServer, dicom_bytes, dx_dataset

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
DCIODVFY = shutil.which("dciodvfy")
MC = ["--samples", "3", "--seed", "5"]


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """(DX film path, its Dataset, a PNG film path)."""
    folder = tmp_path_factory.mktemp("films")
    ds = dx_dataset(SAMPLES[10], patient_id="P-1", patient_name="Roe^Ann", accession="A-9", age=44, sex="M")
    path = folder / "chest.dcm"
    path.write_bytes(dicom_bytes(ds))
    return path, ds, SAMPLES[11]


def run_predict(tiny_run, out, fmt, *files, extra=()):
    return predict_cli.main(["--model", str(tiny_run), *MC, "--format", fmt, "--out", str(out), *extra,
                             *map(str, files)])


def dciodvfy_errors(path):
    """The error lines dciodvfy reports for ``path`` (warnings are not errors)."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_sr_heatmaps_match_json_and_validate(tmp_path, two_positive_run, films, capsys):
    tiny_run = two_positive_run
    dx, ds, png = films
    assert run_predict(tiny_run, tmp_path / "json", "json", dx) == 0
    expected = json.loads((tmp_path / "json" / "chest.json").read_text())
    # dicom-sr: the PNG gets a per-file error naming it and the fix; the DICOM its SR
    assert run_predict(tiny_run, tmp_path / "sr", "dicom-sr", dx, png, extra=["--heatmaps"]) == 1
    out = capsys.readouterr().out
    assert f"{png.name}: --format dicom-sr needs a DICOM film" in out and "use --format fhir or json" in out
    sr = pydicom.dcmread(tmp_path / "sr" / "chest.sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    for key in ("PatientID", "PatientName", "PatientSex", "StudyInstanceUID", "AccessionNumber", "StudyID"):
        assert sr[key].value == ds[key].value, key
    assert sr.SeriesInstanceUID != ds.SeriesInstanceUID and sr.SOPInstanceUID != ds.SOPInstanceUID
    content = read_sr(sr)
    assert content["source"] == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert content["triage_level"] == expected["triage"]["level"] and content["message"] == expected["message"]
    assert "not a diagnosis" in content["decision_aid"]
    assert content.get("caveats", []) == expected["caveats"]  # issue 18: the run's caveats, one item each
    assert content["algorithm"]["Algorithm Name"] == "cxr_tf simple_cnn"
    assert content["algorithm"]["Algorithm Version"] == Path(tiny_run).name
    assert list(content["findings"]) == list(expected["probabilities"]) == list(LABELS)
    for label, values in content["findings"].items():
        assert values["probability"] == pytest.approx(expected["probabilities"][label], abs=1e-6)
        assert values["uncertainty"] == pytest.approx(expected["uncertainty"][label], abs=1e-6)
        assert values["threshold"] == (0.0 if label in ("Effusion", "Mass") else 1.0)
        assert values["positive"] == (label in expected["findings"])
    heatmaps = sorted((tmp_path / "sr").glob("chest_*.sc.dcm"))
    assert sorted(expected["findings"]) == ["Effusion", "Mass"]
    assert sorted(p.name for p in heatmaps) == ["chest_Effusion.sc.dcm", "chest_Mass.sc.dcm"]
    for path in heatmaps:
        sc = pydicom.dcmread(path)
        assert sc.StudyInstanceUID == ds.StudyInstanceUID and sc.PatientID == ds.PatientID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert sc.pixel_array.shape == (*ds.pixel_array.shape, 3)
    if DCIODVFY is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it): conformance unchecked")
    for path in [tmp_path / "sr" / "chest.sr.dcm", *heatmaps[:2]]:
        assert dciodvfy_errors(path) == [], path


def test_fhir_bundle_validates_and_matches_json(tmp_path, tiny_run, films):
    dx, ds, png = films
    assert run_predict(tiny_run, tmp_path / "json", "json", dx, png) == 0
    assert run_predict(tiny_run, tmp_path / "fhir", "fhir", dx, png) == 0
    for film, study in ((dx, ds.StudyInstanceUID), (png, None)):
        expected = json.loads((tmp_path / "json" / f"{film.stem}.json").read_text())
        bundle = Bundle.model_validate_json((tmp_path / "fhir" / f"{film.stem}.fhir.json").read_text())
        resources = [e.resource for e in bundle.entry]
        [report] = [r for r in resources if r.get_resource_type() == "DiagnosticReport"]
        observations = [r for r in resources if r.get_resource_type() == "Observation"]
        # the action, then the run's caveats (issue 18: an unvalidated run says so here too)
        assert report.conclusion.startswith(expected["triage"]["action"]) and report.status == "preliminary"
        assert all(c in report.conclusion for c in expected["caveats"])
        assert report.conclusionCode[0].coding[0].code == expected["triage"]["level"].upper()
        assert len(report.result) == len(observations) == len(expected["probabilities"])
        if study:
            assert report.imagingStudy[0].identifier.value == f"urn:oid:{study}"
            assert report.subject.identifier.value == ds.PatientID
        else:
            assert report.imagingStudy is None and report.subject is None
        for obs in observations:
            label = obs.code.text
            assert float(obs.valueQuantity.value) == pytest.approx(expected["probabilities"][label], abs=1e-6)
            assert obs.interpretation[0].coding[0].code == ("POS" if label in expected["findings"] else "NEG")
            assert float(obs.component[0].valueQuantity.value) == pytest.approx(expected["uncertainty"][label], abs=1e-6)


def test_service_answers_fhir(tiny_run, films):
    dx, ds, _ = films
    live = LiveServer(create_app(Predictor(tiny_run, samples=3), max_files=4)).start()
    try:
        files = [("files", ("chest.dcm", dx.read_bytes())), ("files", ("notes.png", b"not a film at all" * 10))]
        resp = httpx.post(f"{live.url}/api/predict?format=fhir", files=files, timeout=60)
        assert resp.status_code == 200
        assert [r["resourceType"] for r in resp.json()] == ["Bundle", "Bundle"]
        reports = {}
        for answer in resp.json():
            bundle = Bundle.model_validate(answer)
            [report] = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "DiagnosticReport"]
            reports[report.status] = report
        assert reports["preliminary"].imagingStudy[0].identifier.value == f"urn:oid:{ds.StudyInstanceUID}"
        # the unreadable film: a cancelled report saying why, with no results
        unread = reports["cancelled"]
        assert "notes.png" in unread.conclusion and not unread.result
        assert unread.conclusionCode[0].coding[0].code == "NOT_PROCESSED_UNREADABLE"
        bad = httpx.post(f"{live.url}/api/predict?format=xml", files=files[:1], timeout=60)
        assert bad.status_code == 400 and "format" in bad.json()["detail"]  # 422 means: no film readable
    finally:
        live.stop()


def test_other_label_sets_are_encoded_in_the_runs_order(films):
    """A run trained on another label set: its labels, in its order; unknown ones get local codes."""
    from cxr_tf.inference.outputs.dicom_sr import make_sr
    from cxr_tf.inference.outputs.fhir import make_bundle

    _, ds, _ = films
    labels = ("Pneumothorax", "Lung Opacity")
    result = {"file": "f", "probabilities": {"Pneumothorax": 0.8, "Lung Opacity": 0.2},
              "uncertainty": {"Pneumothorax": 0.02, "Lung Opacity": 0.01}, "findings": ["Pneumothorax"],
              "triage": {"level": "urgent", "action": "Read now."}, "message": "critical finding: Pneumothorax (0.80)"}
    description = {"arch": "simple_cnn", "run_dir": "/runs/other", "labels": list(labels), "samples": 5,
                   "thresholds": {"Pneumothorax": 0.5, "Lung Opacity": 0.4}, "split_method": "patient",
                   "test_metrics": {"macro_auc": 0.81}}
    content = read_sr(make_sr(result, ds, description))
    assert list(content["findings"]) == list(labels)
    assert content["findings"]["Lung Opacity"] == {"probability": 0.2, "uncertainty": 0.01, "threshold": 0.4,
                                                  "positive": False}
    assert "test_macro_auc=0.8100" in content["algorithm"]["Algorithm Parameters"]
    bundle = make_bundle(result, description, ds.StudyInstanceUID, ds.PatientID)
    codes = [e.resource.code.coding[0] for e in bundle.entry if e.resource.get_resource_type() == "Observation"]
    assert [(c.system, c.code) for c in codes] == [("http://snomed.info/sct", "36118008"),
                                                   ("urn:cxr-tf:codes", "LUNG_OPACITY")]


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"BodyPartExamined": ""}, None),  # CR/DX without a body part: accepted
    ({"BodyPartExamined": "HAND"}, "not the chest"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "not a chest radiograph"),  # CT
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "BodyPartExamined": ""}, "Secondary Capture not marked"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "OT"}, None),
])
def test_which_films_the_node_triages(changes, problem):
    ds = dx_dataset(SAMPLES[0])
    for key, value in changes.items():
        setattr(ds, key, value)
    if changes.get("BodyPartExamined") == "":
        ds.AnatomicRegionSequence = []
    found = chest_problem(ds)
    assert (found is None) if problem is None else (problem in found)


def test_destination_parse():
    assert str(Destination.parse("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"
    for bad in ("PACS", "PACS@host", "@h:1", "P@h:0", "WAYTOOLONGAETITLE@h:1"):
        with pytest.raises(ValueError, match="AET@HOST:PORT|AE title"):
            Destination.parse(bad)
