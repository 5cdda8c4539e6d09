"""The encodings of a triage result (DICOM TID 1500 SR, Grad-CAM Parametric Map and Secondary
Capture, FHIR Bundle) from ``predict --format``, a film refused by the input gate as a "not
processed" SR and a cancelled FHIR report joined by the Device UID, their conformance (dciodvfy,
pixelmed's DicomSRValidator, fhir.resources), the service's ``?format=fhir``, and which films the
DICOM node accepts."""

import json
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicom_validators import DCIODVFY, SKIP_DCIODVFY, assert_valid_srs, dciodvfy
from fhir.resources.R4B.bundle import Bundle

from cxr_tf import predict as predict_cli
from cxr_tf.data.labels import LABELS
from cxr_tf.inference.dicom_exchange import chest_problem
from cxr_tf.inference.dicom_node import Destination
from cxr_tf.inference.outputs.dicom_sr import read_sr
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.testing import LiveServer, dicom_bytes, dx_dataset

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
MC = ["--samples", "3", "--seed", "5"]
COMPREHENSIVE_3D_SR, PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """(DX film path, its Dataset, a PNG film path)."""
    folder = tmp_path_factory.mktemp("films")
    ds = dx_dataset(SAMPLES[10], patient_id="P-1", patient_name="Roe^Ann", accession="A-9", age=44, sex="M")
    path = folder / "chest.dcm"
    path.write_bytes(dicom_bytes(ds))
    return path, ds, SAMPLES[11]


@pytest.fixture(scope="module")
def inverted(tmp_path_factory):
    """(path, Dataset) of a DX chest film with its grey scale inverted: the input gate refuses it."""
    ds = dx_dataset(SAMPLES[7], patient_id="P-2", patient_name="Poe^Al", accession="A-10")
    ds.PixelData = (255 - np.frombuffer(ds.PixelData, np.uint8)).tobytes()
    path = tmp_path_factory.mktemp("inverted") / "inverted.dcm"
    path.write_bytes(dicom_bytes(ds))
    return path, ds


def run_predict(tiny_run, out, fmt, *files, extra=()):
    return predict_cli.main(["--model", str(tiny_run), *MC, "--format", fmt, "--out", str(out), *extra,
                             *map(str, files)])


def test_sr_maps_match_json_and_validate(tmp_path, two_positive_run, films, inverted, capsys):
    """predict --format dicom-sr --heatmaps: a TID 1500 report and a Parametric Map per positive finding
    for the chest film, a "not processed" report for the film the gate refuses, the same numbers as
    predict --json, and both validators (dciodvfy, pixelmed) clean."""
    tiny_run = two_positive_run
    dx, ds, png = films
    bad, bad_ds = inverted
    assert run_predict(tiny_run, tmp_path / "json", "json", dx, bad) == 1  # a film not processed
    expected = json.loads((tmp_path / "json" / "chest.json").read_text())
    refused = json.loads((tmp_path / "json" / "inverted.json").read_text())
    assert refused["reason"] == "inverted"
    # dicom-sr: the PNG gets a per-file error naming it and the fix; the DICOM its SR
    assert run_predict(tiny_run, tmp_path / "sr", "dicom-sr", dx, png, bad, extra=["--heatmaps"]) == 1
    out = capsys.readouterr().out
    assert f"{png.name}: --format dicom-sr needs a DICOM film" in out and "use --format fhir or json" in out
    sr = pydicom.dcmread(tmp_path / "sr" / "chest.sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    for key in ("PatientID", "PatientName", "PatientSex", "StudyInstanceUID", "AccessionNumber", "StudyID"):
        assert sr[key].value == ds[key].value, key
    assert sr.SeriesInstanceUID != ds.SeriesInstanceUID and sr.SOPInstanceUID != ds.SOPInstanceUID
    content = read_sr(sr)
    assert content["status"] == "processed" and content["template"] == "1500"
    assert content["source"] == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert content["triage_level"] == expected["triage"]["level"] and content["message"] == expected["message"]
    assert content["action"] == expected["triage"]["action"]
    assert "not a diagnosis" in content["decision_aid"]
    assert content.get("caveats", []) == expected["caveats"]  # issue 18: the run's caveats, one item each
    algorithm = content["algorithm"]
    assert algorithm["Algorithm Name"] == "cxr_tf simple_cnn"
    assert algorithm["Algorithm Version"] == Path(tiny_run).name
    params = algorithm["Algorithm Parameters"]
    assert "arch=simple_cnn" in params and f"run={Path(tiny_run).name}" in params
    assert f"input_gate={expected['gate']['version']} frontal_score={expected['gate']['score']:.4f}" in params
    assert all(f"caveat={c}" in params for c in expected["caveats"])
    assert list(content["findings"]) == list(expected["probabilities"]) == list(LABELS)
    for label, values in content["findings"].items():
        assert values["probability"] == pytest.approx(expected["probabilities"][label], abs=1e-6)
        assert values["uncertainty"] == pytest.approx(expected["uncertainty"][label], abs=1e-6)
        assert values["threshold"] == (0.0 if label in ("Effusion", "Mass") else 1.0)
        assert values["positive"] == (label in expected["findings"])
    # the Device UID: one for the run, in the observer context and the Contributing Equipment
    [equipment] = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "cxr_tf"]
    assert equipment.DeviceUID == content["device_uid"]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    # the refused film: a report in its own study saying it was received and why it was not analysed
    not_processed = pydicom.dcmread(tmp_path / "sr" / "inverted.sr.dcm")
    assert not_processed.StudyInstanceUID == bad_ds.StudyInstanceUID and not_processed.PatientID == "P-2"
    said = read_sr(not_processed)
    assert said["status"] == "not processed" and said["reason"] == "inverted" and said["template"] == "1500"
    assert said["error"].startswith(refused["error"]) and said["source"][1] == bad_ds.SOPInstanceUID
    assert said["device_uid"] == content["device_uid"]
    # the maps: one Parametric Map per positive finding, float Grad-CAM values on the film's grid
    maps = sorted((tmp_path / "sr").glob("chest_*.pm.dcm"))
    assert sorted(expected["findings"]) == ["Effusion", "Mass"]
    assert [p.name for p in maps] == ["chest_Effusion.pm.dcm", "chest_Mass.pm.dcm"]
    series = set()
    for path in maps:
        pm = pydicom.dcmread(path)
        assert pm.SOPClassUID == PARAMETRIC_MAP and pm.StudyInstanceUID == ds.StudyInstanceUID
        assert pm.PatientID == ds.PatientID and pm.SeriesInstanceUID not in (ds.SeriesInstanceUID, sr.SeriesInstanceUID)
        series.add(pm.SeriesInstanceUID)
        source = pm.SharedFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0] \
            if "DerivationImageSequence" in pm.SharedFunctionalGroupsSequence[0] else \
            pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        pixels = pm.pixel_array
        assert pixels.dtype == np.float32 and pixels.shape == ds.pixel_array.shape
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.LUTLabel == "GRADCAM" and mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == pytest.approx([float(v) for v in ds.ImagerPixelSpacing])
        assert pm.DeviceUID == content["device_uid"]
    assert len(series) == 1
    # the legacy option: Secondary Captures only when asked for by name
    assert run_predict(tiny_run, tmp_path / "sc", "heatmap-sc", dx) == 0
    assert sorted(p.name for p in (tmp_path / "sc").iterdir()) == ["chest_Effusion.sc.dcm", "chest_Mass.sc.dcm"]
    if DCIODVFY is None:
        pytest.skip(SKIP_DCIODVFY)
    for path in [*maps, tmp_path / "sc" / "chest_Mass.sc.dcm"]:
        assert dciodvfy(path)[0] == [], path
    assert_valid_srs([tmp_path / "sr" / "chest.sr.dcm", tmp_path / "sr" / "inverted.sr.dcm"])


def test_fhir_bundle_validates_and_matches_json(tmp_path, tiny_run, films, inverted):
    dx, ds, png = films
    assert run_predict(tiny_run, tmp_path / "json", "json", dx, png) == 0
    assert run_predict(tiny_run, tmp_path / "fhir", "fhir", dx, png) == 0
    # the Device joins the SR of the same film: its identifier is the SR's Device UID
    assert run_predict(tiny_run, tmp_path / "both", "fhir", dx, inverted[0], extra=["--format", "dicom-sr"]) == 1
    for stem, status in (("chest", "preliminary"), ("inverted", "cancelled")):
        bundle = Bundle.model_validate_json((tmp_path / "both" / f"{stem}.fhir.json").read_text())
        [device] = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Device"]
        [report] = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "DiagnosticReport"]
        sr = read_sr(pydicom.dcmread(tmp_path / "both" / f"{stem}.sr.dcm"))
        assert report.status == status and device.identifier[0].value == f"urn:oid:{sr['device_uid']}"
        assert report.imagingStudy[0].identifier.value == f"urn:oid:{pydicom.dcmread(dx if stem == 'chest' else inverted[0]).StudyInstanceUID}"
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


def test_device_uid_is_the_models(tiny_run, tmp_path):
    """One Device UID per model: the same model.keras in another folder gives the same UID, other
    weights (a retrained or re-imported model) another."""
    import shutil

    import keras

    from cxr_tf.inference.outputs.structured import device_uid

    moved = Path(shutil.copytree(tiny_run, tmp_path / "moved"))
    retrained = Path(shutil.copytree(tiny_run, tmp_path / "retrained"))
    model = keras.saving.load_model(retrained / "model.keras", compile=False)
    model.set_weights([w + 0.01 for w in model.get_weights()])
    model.save(retrained / "model.keras")
    uids = [device_uid(Predictor(run, samples=1).describe()) for run in (tiny_run, moved, retrained)]
    assert uids[0] == uids[1] != uids[2]


def test_reports_derive_their_uids_and_always_build(tiny_run, films):
    """The same film and model give the same report UIDs (a report sent again replaces itself); a
    triage report that cannot be built becomes the film's "not processed" report (output_failed),
    never nothing."""
    from cxr_tf.inference.outputs import FORMATS
    from cxr_tf.inference.results import FilmResult

    path, ds, _ = films
    predictor = Predictor(tiny_run, samples=2)
    [result] = predictor.predict([path])
    first, again = (FORMATS["dicom-sr"].write(result, predictor)[0].value for _ in range(2))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert read_sr(first)["status"] == "processed"
    broken = FilmResult(result.file, film=result.film, verdict={**result.verdict, "uncertainty": {}}, gate=result.gate)
    [output] = FORMATS["dicom-sr"].write(broken, predictor)
    content = read_sr(output.value)
    assert content["status"] == "not processed" and content["reason"] == "output_failed"
    assert "KeyError" in content["error"] and content["source"][1] == ds.SOPInstanceUID
