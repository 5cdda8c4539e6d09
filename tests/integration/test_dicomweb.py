"""The DICOMweb front end against a real Orthanc with its DICOMweb plugin and basic
authentication: films uploaded over STOW-RS, the front end's pass (QIDO-RS, WADO-RS, triage,
STOW-RS), the reports and maps read back over QIDO-RS and WADO-RS (never trusting a STOW answer
alone: dicomweb-client #42) and checked against ``predict --json`` on the same films; a refused film's
"not processed" report; the cursor (a second pass repeats nothing, a new film is picked up); results
the archive does not store are kept and reported."""

import datetime
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validators import DCIODVFY, SKIP_DCIODVFY, dciodvfy
from orthanc_server import DICOMWEB_PLUGIN, ORTHANC, Orthanc

from cxr_tf import dicomweb as dicomweb_cli
from cxr_tf import predict as predict_cli
from cxr_tf.inference.dicomweb import DicomWebFrontEnd, make_session
from cxr_tf.inference.outputs.dicom_sr import read_sr
from cxr_tf.inference.predictor import Predictor
from cxr_tf.testing import dicom_bytes, dx_dataset

pytestmark = pytest.mark.skipif(ORTHANC is None or DICOMWEB_PLUGIN is None,
                                reason="Orthanc or its DICOMweb plugin not installed (Debian packages orthanc, "
                                       "orthanc-dicomweb; .ci/run installs them)")
SAMPLES = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
USERS = {"cxr": "s3cret"}
SEED, MC = 11, 3
SR_3D, PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc-dicomweb")
    orthanc = Orthanc(folder, {}, dicomweb=True, users=USERS).start()
    yield orthanc
    orthanc.stop()


def client(orthanc, auth=("basic", "cxr", "s3cret")):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(orthanc.dicomweb, session=make_session(auth), chunk_size=1 << 30)


def instances(web, study, sop_class):
    """[(series, SOP Instance UID)] of ``sop_class`` in ``study``, by QIDO-RS."""
    found = web.search_for_instances(study_instance_uid=study, search_filters={"SOPClassUID": sop_class})
    return [(a["0020000E"]["Value"][0], a["00080018"]["Value"][0]) for a in found]


def run_front_end(tiny_run, orthanc, cursor, monkeypatch, *extra):
    monkeypatch.setenv("CXR_TEST_PASSWORD", USERS["cxr"])
    return dicomweb_cli.main(["--model", str(tiny_run), "--samples", str(MC), "--seed", str(SEED),
                              "--url", orthanc.dicomweb, "--cursor", str(cursor), "--once", "--user", "cxr",
                              "--password-env", "CXR_TEST_PASSWORD",
                              "--since", datetime.date.today().strftime("%Y%m%d"), *extra])


def test_round_trip_over_dicomweb(archive, two_positive_run, tmp_path, monkeypatch, capsys):
    web = client(archive)
    chest = dx_dataset(SAMPLES[3], patient_id="WEB-1", patient_name="Web^Ann", accession="W-1")
    inverted = dx_dataset(SAMPLES[7], patient_id="WEB-2", accession="W-2")
    inverted.PixelData = (255 - np.frombuffer(inverted.PixelData, np.uint8)).tobytes()
    web.store_instances([chest, inverted])  # uploaded over DICOMweb, then read back: stored?
    for ds in (chest, inverted):
        assert instances(web, ds.StudyInstanceUID, ds.SOPClassUID) == [(ds.SeriesInstanceUID, ds.SOPInstanceUID)]
    cursor = tmp_path / "cursor.json"
    assert run_front_end(two_positive_run, archive, cursor, monkeypatch, "--heatmaps") == 0
    assert "stopped: triaged 1, not processed 1, failed 0, unsent 0" in capsys.readouterr().out
    # predict --json on the same films, same seed
    for ds in (chest, inverted):
        (tmp_path / f"{ds.PatientID}.dcm").write_bytes(dicom_bytes(ds))
    predict_cli.main(["--model", str(two_positive_run), "--samples", str(MC), "--seed", str(SEED), "--format", "json",
                      "--out", str(tmp_path / "json"), str(tmp_path / "WEB-1.dcm"), str(tmp_path / "WEB-2.dcm")])
    expected = json.loads((tmp_path / "json" / "WEB-1.json").read_text())
    refused = json.loads((tmp_path / "json" / "WEB-2.json").read_text())
    # read back over QIDO-RS + WADO-RS
    [(series, sop)] = instances(web, chest.StudyInstanceUID, SR_3D)
    sr = web.retrieve_instance(chest.StudyInstanceUID, series, sop)
    content = read_sr(sr)
    assert sr.PatientID == "WEB-1" and sr.AccessionNumber == "W-1" and series != chest.SeriesInstanceUID
    assert content["source"] == (chest.SOPClassUID, chest.SOPInstanceUID)
    assert content["triage_level"] == expected["triage"]["level"] and content["action"] == expected["triage"]["action"]
    for label, p in expected["probabilities"].items():
        got = content["findings"][label]
        assert abs(got["probability"] - p) <= 1e-6 and abs(got["uncertainty"] - expected["uncertainty"][label]) <= 1e-6
        assert got["positive"] == (label in expected["findings"])
    maps = instances(web, chest.StudyInstanceUID, PARAMETRIC_MAP)
    assert len(maps) == len(expected["findings"]) == 2
    for map_series, map_sop in maps:
        pm = web.retrieve_instance(chest.StudyInstanceUID, map_series, map_sop)
        assert pm.pixel_array.dtype == np.float32 and pm.pixel_array.shape == (chest.Rows, chest.Columns)
        assert pm.DeviceUID == content["device_uid"]
    [(series, sop)] = instances(web, inverted.StudyInstanceUID, SR_3D)
    said = read_sr(web.retrieve_instance(inverted.StudyInstanceUID, series, sop))
    assert said["status"] == "not processed" and said["reason"] == refused["reason"] == "inverted"
    # the cursor: a second pass repeats nothing; a new film is picked up, and only it
    assert run_front_end(two_positive_run, archive, cursor, monkeypatch) == 0
    assert "stopped: triaged 0, not processed 0" in capsys.readouterr().out
    later = dx_dataset(SAMPLES[5], patient_id="WEB-3", study_uid=chest.StudyInstanceUID)
    web.store_instances([later])
    assert run_front_end(two_positive_run, archive, cursor, monkeypatch) == 0
    assert "stopped: triaged 1, not processed 0" in capsys.readouterr().out
    assert len(instances(web, chest.StudyInstanceUID, SR_3D)) == 2
    assert set(json.loads(cursor.read_text())["done"]) == {chest.SOPInstanceUID, inverted.SOPInstanceUID,
                                                          later.SOPInstanceUID}
    if DCIODVFY is None:
        pytest.skip(SKIP_DCIODVFY)
    path = tmp_path / "map.dcm"
    path.write_bytes(dicom_bytes(pm))
    assert dciodvfy(path)[0] == []


def test_wrong_password_is_one_line(archive, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WRONG", "nope")
    code = dicomweb_cli.main(["--model", str(tiny_run), "--samples", "1", "--url", archive.dicomweb, "--cursor",
                              str(tmp_path / "c.json"), "--once", "--user", "cxr", "--password-env", "WRONG"])
    err = capsys.readouterr().err
    assert code == 1 and "401" in err and "Traceback" not in err


def test_unstored_results_are_kept_and_reported(archive, tiny_run, tmp_path, monkeypatch, caplog):
    """The archive answers STOW-RS without storing (as dicomweb-client #42 reported of chunked uploads):
    the front end sees its results are not listed, retries, and keeps and reports them on stop."""
    web = client(archive)
    ds = dx_dataset(SAMPLES[9], patient_id="WEB-4")
    web.store_instances([ds])
    front = DicomWebFrontEnd(Predictor(tiny_run, samples=1), archive.dicomweb, tmp_path / "cursor.json",
                             since=datetime.date.today().strftime("%Y%m%d"), auth=("basic", "cxr", "s3cret"),
                             keep_unsent=tmp_path / "kept", retry_initial=0.05, retry_max=0.2)
    front.cursor.done.update({sop: "earlier test" for _, _, sop in front.new_instances() if sop != ds.SOPInstanceUID})
    monkeypatch.setattr(front.client, "store_instances", lambda datasets, **_: pydicom.Dataset())  # 200, nothing
    front.run_once()
    report = front.stop(drain_timeout=0.3)
    assert report["unsent"] == [ds.SOPInstanceUID] and front.stats["store_failures"] >= 2
    [kept] = (tmp_path / "kept" / ds.SOPInstanceUID).glob("*.dcm")
    assert read_sr(pydicom.dcmread(kept))["source"][1] == ds.SOPInstanceUID
    assert any("NOT STORED" in r.getMessage() and ds.SOPInstanceUID in r.getMessage() for r in caplog.records)
    assert instances(web, ds.StudyInstanceUID, SR_3D) == []  # really not stored
