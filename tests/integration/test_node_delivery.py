"""The node's delivery guarantee with real processes (issue 28): the node as a subprocess with a
spool, Orthanc as the PACS, films sent by a pynetdicom SCU. ``kill -9`` in the middle of 100 films
while the PACS is down, the PACS up, then a restart: every acknowledged film has exactly one report
in Orthanc (the earlier in-process "PACS down, then up" test is this one now). Films missing Type 2
attributes, with malformed dates or an invalid UID each get a report that passes dciodvfy with no
error. A caller not on ``--allow`` and an association over ``--max-associations`` get the standard
rejections. SIGTERM at the end leaves an empty spool."""

import io
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from dicom_validators import DCIODVFY, SKIP_DCIODVFY, assert_no_local_code_warnings, dciodvfy
from orthanc_server import AET, ORTHANC, Orthanc

from cxr_tf.inference.outputs.dicom_sr import read_sr
from cxr_tf.testing import dx_dataset, free_port

pytestmark = pytest.mark.skipif(ORTHANC is None, reason="Orthanc binary not installed (Debian package orthanc; "
                                                         ".ci/run installs it)")
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "cxr_tf" / "sample" / "images").glob("*.png"))
GOOD = [p for i, p in enumerate(SAMPLES) if i != 7]  # sample 7 is refused by the input gate in other tests
FILMS, KILL_AFTER = 100, 40
SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def two_label_run(tmp_path_factory):
    """An untrained ``simple_cnn`` at 64 px with two findings (Effusion, Mass): a report per film
    costs a seventh of a 14-finding one, and this test builds 114 of them."""
    from conftest import write_run_dir

    from cxr_tf import runs
    from cxr_tf.models import build_model

    run = write_run_dir(tmp_path_factory.mktemp("two_labels"), build_model("simple_cnn", image_size=64, num_labels=2),
                        "simple_cnn", 64, thresholds=False, split_method="synthetic")
    runs.write_labels(run, ["Effusion", "Mass"])
    runs.write_thresholds({"Effusion": 0.5, "Mass": 0.5}, run / runs.THRESHOLDS)
    return run


def malformed_films():
    """{name: Dataset}: the 13 films of issue 28 (9 Type 2 attributes absent, 4 malformed dates and
    times) and one whose Series Instance UID has a character no UID may hold."""
    films = {}
    for key in ("AccessionNumber", "StudyDate", "StudyTime", "StudyID", "PatientID", "PatientName", "PatientSex",
                "PatientBirthDate", "SeriesInstanceUID"):
        films[f"no {key}"] = ds = dx_dataset(GOOD[len(films) % len(GOOD)])
        del ds[key]
    for key, value in (("StudyDate", "2024-13-45"), ("PatientBirthDate", "19xx0101"), ("StudyTime", "25:61:99"),
                       ("ContentDate", "20241301")):
        films[f"bad {key}"] = ds = dx_dataset(GOOD[len(films) % len(GOOD)])
        ds[key].value = value
    films["invalid SeriesInstanceUID"] = ds = dx_dataset(GOOD[0])
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1143.7#9"
    return films


class Node:
    """``python -m cxr_tf.dicom_node`` as a subprocess; ``start()`` returns once it listens."""

    def __init__(self, run, port, pacs_port, spool, log):
        self.args = [sys.executable, "-m", "cxr_tf.dicom_node", "--model", str(run), "--port", str(port),
                     "--samples", "2", "--destination", f"{AET}@127.0.0.1:{pacs_port}", "--spool", str(spool),
                     "--allow", "MODALITY@127.0.0.1", "--max-associations", "2", "--retry-initial", "0.2",
                     "--retry-max", "1"]
        self.log, self.process = log, None

    def start(self):
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log.open("ab"),
                                        env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
        line = self.process.stdout.readline()
        assert "listening" in line, (line, self.log.read_text()[-3000:])
        return self


SAMPLE_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation (cxr_tf.testing.dx_dataset)


def associate(port, aet="MODALITY", bind="127.0.0.1"):
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context(SAMPLE_CLASS, "1.2.840.10008.1.2.1")
    return ae.associate("127.0.0.1", port, ae_title="CXR_TF", bind_address=(bind, 0))


def send(port, films, acknowledged, on_ack=None):
    """C-STORE ``films`` over one association; SOP Instance UIDs answered 0x0000 go to ``acknowledged``.
    Stops at the first film without an answer (the node died)."""
    assoc = associate(port)
    assert assoc.is_established
    try:
        for ds in films:
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                return
            if status.Status == 0x0000:
                acknowledged.append(ds.SOPInstanceUID)
                if on_ack:
                    on_ack(len(acknowledged))
    finally:
        if assoc.is_established:
            assoc.release()


def reports(orthanc):
    """{film SOP Instance UID: [(report SOP Instance UID, Orthanc id)]} of every SR in Orthanc."""
    status, found = orthanc.request("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPClassUID": SR},
                                                            "Expand": True})
    assert status == 200, found
    out = {}
    for instance in found:
        sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance['ID']}/file")), stop_before_pixels=True)
        film = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        out.setdefault(film.ReferencedSOPInstanceUID, []).append((sr.SOPInstanceUID, instance["ID"]))
    return out


def wait_reports(orthanc, uids, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        found = reports(orthanc)
        if all(u in found for u in uids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


# the malformed films are malformed on purpose: pydicom says so when the test writes them
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
def test_kill_9_restart_malformed_films_allowlist(tmp_path, two_label_run):
    if DCIODVFY is None:
        pytest.skip(SKIP_DCIODVFY)
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", {"cxrtf": ("CXR_TF", "127.0.0.1", node_port)})  # down at first
    spool = tmp_path / "spool"
    node = Node(two_label_run, node_port, orthanc.dicom_port, spool, tmp_path / "node.log")
    films = [dx_dataset(GOOD[i % len(GOOD)], patient_id=f"KILL{i}") for i in range(FILMS)]
    acknowledged = []
    try:
        node.start()

        def kill(count):
            if count == KILL_AFTER:
                node.process.kill()  # SIGKILL: no handler, no flush, no goodbye

        send(node_port, films, acknowledged, on_ack=kill)
        node.process.wait(timeout=30)
        assert KILL_AFTER <= len(acknowledged) < FILMS
        # the spool holds what the node had not finished: patient data, private to the node's user
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        left = list((spool / "inbox").glob("*.dcm")) + list((spool / "outbox").rglob("*.dcm"))
        assert left and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in left)

        orthanc.start()  # the PACS comes up
        node.start()  # resumes the spool; the sender sends what was never acknowledged
        send(node_port, [ds for ds in films if ds.SOPInstanceUID not in acknowledged], acknowledged)
        malformed = malformed_films()
        send(node_port, list(malformed.values()), acknowledged)
        assert len(acknowledged) == FILMS + len(malformed)
        found = wait_reports(orthanc, acknowledged)
        # every acknowledged film: exactly one report (a report sent twice kept its UID, so Orthanc
        # holds it once); no report for anything else
        assert sorted(found) == sorted(acknowledged)
        assert {uid: len(r) for uid, r in found.items() if len(r) != 1} == {}

        # the malformed films: each report validates
        for name, ds in malformed.items():
            [(_, instance)] = found[ds.SOPInstanceUID]
            path = tmp_path / f"{instance}.sr.dcm"
            path.write_bytes(orthanc.get(f"/instances/{instance}/file"))
            errors, _ = dciodvfy(path)
            assert errors == [], (name, errors)
            assert_no_local_code_warnings(path)
            content = read_sr(pydicom.dcmread(path))
            assert content["status"] == "processed" and content["source"][1] == ds.SOPInstanceUID, name
            if name == "invalid SeriesInstanceUID":  # replaced, and the report says so
                assert any("not a valid UID" in c for c in content["caveats"]), content.get("caveats")

        # the allowlist: another AE title, or the right one from another address, is rejected
        for aet, bind in (("INTRUDER", "127.0.0.1"), ("MODALITY", "127.0.0.2")):
            assoc = associate(node_port, aet, bind)
            assert assoc.is_rejected, (aet, bind)
            assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (0x01, 0x03)
        # the association limit (2): a third at once is rejected as transient, local limit exceeded
        held = [associate(node_port) for _ in range(2)]
        try:
            assert all(a.is_established for a in held)
            third = associate(node_port)
            assert third.is_rejected
            primitive = third.acceptor.primitive
            assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x02, 0x03, 0x02)
        finally:
            for assoc in held:
                assoc.release()

        node.process.send_signal(signal.SIGTERM)
        out, _ = node.process.communicate(timeout=60)
        assert node.process.returncode == 0, (out, (tmp_path / "node.log").read_text()[-3000:])
        assert "unsent 0" in out and "failed 0" in out
        assert list((spool / "inbox").iterdir()) == [] and list((spool / "outbox").iterdir()) == []
    finally:
        if node.process and node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        orthanc.stop()
