"""The DICOM node against a real PACS: Orthanc sends it films over DICOM, the node
answers with TID 1500 SRs (and Grad-CAM Parametric Maps) in the same study; refusals, each with
a "not processed" SR in its study; every SR passes dciodvfy and pixelmed; without a spool a film is
acknowledged once its report exists. (The node as a process with a spool, kill -9, a PACS down then
up, SIGTERM: test_node_delivery.py.)"""

import io
import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_validators import assert_valid_srs
from orthanc_server import AET, ORTHANC, Orthanc

from cxr_tf import predict as predict_cli
from cxr_tf.inference.dicom_node import Destination, DicomNode
from cxr_tf.inference.outputs.dicom_sr import read_sr
from cxr_tf.inference.predictor import Predictor
from cxr_tf.testing import dicom_bytes, dx_dataset, free_port

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not installed (Debian package "
                                                            "orthanc; .ci/run installs it)")
SAMPLES = sorted((Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images").glob("*.png"))
SEED, MC = 11, 5


PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def sr_and_heatmaps(instances):
    classes = [c for _, c, _ in instances]
    return any(m == "SR" for m, _, _ in instances) and classes.count(PARAMETRIC_MAP) == 2


@needs_orthanc
def test_orthanc_round_trip_refusals_and_node_stays_up(tmp_path, two_positive_run, caplog):
    tiny_run = two_positive_run
    film = tmp_path / "film.dcm"
    ds = dx_dataset(SAMPLES[3], patient_id="PAT-042", patient_name="Doe^Jane", accession="ACC-7", age=61, sex="F")
    film.write_bytes(dicom_bytes(ds))
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", {"cxrtf": ("CXR_TF", "127.0.0.1", node_port)})
    orthanc.start()
    node = None
    try:
        node = DicomNode(Predictor(tiny_run, samples=MC, seed=SEED), aet="CXR_TF", port=node_port, heatmaps=True,
                         fhir_out=tmp_path / "fhir",
                         destination=Destination(AET, "127.0.0.1", orthanc.dicom_port), retry_initial=0.2,
                         retry_max=2).start()
        uploaded = orthanc.upload(film.read_bytes())
        status, body = orthanc.request("POST", "/modalities/cxrtf/store", uploaded["ID"].encode())
        assert status == 200, body
        orthanc.wait_for(ds.StudyInstanceUID, sr_and_heatmaps)
        assert node.wait_idle(60)  # every heatmap sent too
        found = orthanc.study_instances(ds.StudyInstanceUID)
        [sr_id] = [i for m, _, i in found if m == "SR"]
        sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{sr_id}/file")))
        # identity: same patient and study, a new series, the film referenced
        for key in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
            assert sr[key].value == ds[key].value, key
        assert sr.SeriesInstanceUID != ds.SeriesInstanceUID
        content = read_sr(sr)
        assert content["source"] == (ds.SOPClassUID, ds.SOPInstanceUID)
        # the numbers are those of predict --json on the same file (same seed: same MC masks)
        assert predict_cli.main(["--model", str(tiny_run), "--samples", str(MC), "--seed", str(SEED),
                                 "--format", "json", "--out", str(tmp_path / "json"), str(film)]) == 0
        expected = json.loads((tmp_path / "json" / "film.json").read_text())
        assert content["triage_level"] == expected["triage"]["level"]
        assert content["action"] == expected["triage"]["action"]
        for label, p in expected["probabilities"].items():
            got = content["findings"][label]
            assert abs(got["probability"] - p) <= 1e-6 and abs(got["uncertainty"] - expected["uncertainty"][label]) <= 1e-6
            assert got["positive"] == (label in expected["findings"])
        heatmaps = [i for _, c, i in found if c == PARAMETRIC_MAP]
        assert sorted(expected["findings"]) == ["Effusion", "Mass"] and len(heatmaps) == 2
        [device] = [e["resource"] for e in json.loads((tmp_path / "fhir" / f"{ds.SOPInstanceUID}.fhir.json").read_text())
                    ["entry"] if e["resource"]["resourceType"] == "Device"]
        assert device["identifier"][0]["value"] == f"urn:oid:{content['device_uid']}"
        bundle = json.loads((tmp_path / "fhir" / f"{ds.SOPInstanceUID}.fhir.json").read_text())
        [report] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
        assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{ds.StudyInstanceUID}"
        assert report["conclusion"].startswith(expected["triage"]["action"])  # then the caveats (issue 18)

        # refused: a hand film, a film whose pixel data is cut short, and a chest film with its grey
        # scale inverted (the input gate); Orthanc reports each failure
        hand = dx_dataset(SAMPLES[4], body_part="HAND", study_uid=ds.StudyInstanceUID)
        broken = dx_dataset(SAMPLES[5], study_uid=ds.StudyInstanceUID)
        broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
        inverted = dx_dataset(SAMPLES[7], study_uid=ds.StudyInstanceUID)
        inverted.PixelData = (255 - np.frombuffer(inverted.PixelData, np.uint8)).tobytes()
        for bad, reason in ((hand, "not the chest"), (broken, "pixel data"), (inverted, "inverted")):
            bad_id = orthanc.upload(dicom_bytes(bad))["ID"]
            status, body = orthanc.request("POST", "/modalities/cxrtf/store", bad_id.encode())
            assert status != 200, (body, node.refusals, (orthanc.log.read_text()[-3000:]))
            [(_, why)] = [r for r in node.refusals if r[0] == bad.SOPInstanceUID]
            assert reason in why
            assert any(bad.SOPInstanceUID in rec.getMessage() for rec in caplog.records)
        # still serving: another film of the study gets its SR
        again = dx_dataset(SAMPLES[6], study_uid=ds.StudyInstanceUID)
        status, _ = orthanc.request("POST", "/modalities/cxrtf/store", orthanc.upload(dicom_bytes(again))["ID"].encode())
        assert status == 200
        # 2 triaged films and 3 refused ones: an SR each, the refused ones saying why
        found = orthanc.wait_for(ds.StudyInstanceUID, lambda inst: [m for m, _, _ in inst].count("SR") == 5)
        said = {}
        (tmp_path / "srs").mkdir()
        for _, _, instance in (f for f in found if f[0] == "SR"):
            part10 = orthanc.get(f"/instances/{instance}/file")
            content = read_sr(pydicom.dcmread(io.BytesIO(part10)))
            said[content["source"][1]] = content
            (tmp_path / "srs" / f"{instance}.sr.dcm").write_bytes(part10)
        assert {uid: c.get("reason") for uid, c in said.items() if c["status"] == "not processed"} == {
            hand.SOPInstanceUID: "not_chest_radiograph", broken.SOPInstanceUID: "unreadable",
            inverted.SOPInstanceUID: "inverted"}
        assert "not the chest" in said[hand.SOPInstanceUID]["error"]
        node_stats = node.stats
        report = node.stop()
        node = None
        assert report["unsent"] == [] and report["triaged"] == 2 and report["refused"] == 3
        assert node_stats["not_processed_reports"] == 3
        # the validators on a triaged report and a refused film's (header only) report: the other three
        # are built by the same code (pixelmed costs tens of seconds a file on a busy machine)
        kept = [p for p in (tmp_path / "srs").glob("*.sr.dcm")
                if read_sr(pydicom.dcmread(p))["source"][1] in (ds.SOPInstanceUID, hand.SOPInstanceUID)]
        assert len(kept) == 2
        assert_valid_srs(kept)
    finally:
        if node is not None:
            node.stop(drain_timeout=0)
        orthanc.stop()


def send_to_node(port, ds):
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TF")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


def test_destination_never_up_is_reported_and_kept(tmp_path, tiny_run, caplog):
    """Without a spool the node acknowledges a film only once its report exists (in the outbox when
    0x0000 comes back); results that cannot be delivered by the time the node stops are reported by
    film UID and, with keep_unsent, written (here: a port nothing listens on)."""
    node_port = free_port()
    node = DicomNode(Predictor(tiny_run, samples=2), port=node_port, keep_unsent=tmp_path / "unsent",
                     destination=Destination("NOBODY", "127.0.0.1", free_port()), retry_initial=0.1,
                     retry_max=0.5).start()
    ds = dx_dataset(SAMPLES[8])
    try:
        assert send_to_node(node_port, ds) == 0x0000
        assert [p.sop_uid for p in node.outbox if p.is_report] == [ds.SOPInstanceUID]
        wait_until(lambda: node.stats["send_failures"] >= 1)
    finally:
        report = node.stop(drain_timeout=0.3)
    assert report["unsent"] == [ds.SOPInstanceUID] and report["triaged"] == 1 and report["sent"] == 0
    [kept] = (tmp_path / "unsent" / ds.SOPInstanceUID).glob("*.dcm")
    assert read_sr(pydicom.dcmread(kept))["source"][1] == ds.SOPInstanceUID
    assert any("NOT SENT" in r.getMessage() and ds.SOPInstanceUID in r.getMessage() for r in caplog.records)


def wait_until(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
