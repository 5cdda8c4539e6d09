"""A real Orthanc PACS for tests: its own temporary config and storage, free loopback
ports, started and stopped by the test. ``ORTHANC`` is the binary (None when missing);
``DICOMWEB_PLUGIN`` its DICOMweb plugin (Debian orthanc-dicomweb; None when missing)."""

import base64
import glob
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

from cxr_tf.testing import free_port

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = next(iter(sorted(glob.glob("/usr/lib/orthanc/libOrthancDicomWeb.so*"))), None)
AET = "ORTHANC"


class Orthanc:
    """``Orthanc(folder, modalities={"name": (AET, host, port)}).start()``; ``.stop()``.

    REST at ``.url`` (loopback only: RemoteAccessAllowed false); DICOM at ``.dicom_port``.
    Only the listed modalities may C-STORE into it (DicomAlwaysAllowStore false). ``dicomweb``: load
    the DICOMweb plugin (root ``.dicomweb``); ``users``: {user: password} for HTTP basic
    authentication (every REST and DICOMweb call then needs it; ``request`` sends the first)."""

    def __init__(self, folder, modalities, dicom_port=None, dicomweb=False, users=None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "cxr_tf-test", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": AET, "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users),
            "RegisteredUsers": dict(users or {}), "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
            "DicomWeb": {"Enable": bool(dicomweb), "Root": "/dicom-web/", "EnableWado": False},
            "DicomModalities": {name: list(m) for name, m in modalities.items()},
            "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True, "DicomScuTimeout": 20,
            "StableAge": 1, "ConcurrentJobs": 2, "HttpTimeout": 60,
        }
        self.dicomweb = f"{self.url}/dicom-web"
        self._auth = None
        if users:
            user, password = next(iter(users.items()))
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        self.process = None

    def start(self, timeout=30):
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(self, method, path, body=None):
        """(HTTP status, parsed JSON or raw bytes) of a REST call."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path):
        status, body = self.request("GET", path)
        if status != 200:
            raise ConnectionError(f"GET {path}: HTTP {status} {body!r}")
        return body

    def upload(self, part10):
        """Store DICOM bytes; returns Orthanc's answer ({"ID", "ParentStudy", ...})."""
        status, body = self.request("POST", "/instances", part10)
        if status != 200:
            raise RuntimeError(f"Orthanc refused the upload: HTTP {status} {body!r}")
        return body

    def study_instances(self, study_uid):
        """[(Modality, SOPClassUID, Orthanc instance id)] of the study with this StudyInstanceUID."""
        status, ids = self.request("POST", "/tools/lookup", study_uid.encode())
        studies = [i["ID"] for i in ids if i["Type"] == "Study"] if status == 200 else []
        out = []
        for study in studies:
            for series in self.get(f"/studies/{study}/series"):
                for instance in series["Instances"]:
                    tags = self.get(f"/instances/{instance}/simplified-tags")
                    out.append((series["MainDicomTags"].get("Modality"), tags.get("SOPClassUID"), instance))
        return out

    def wait_for(self, study_uid, predicate, timeout=60):
        """Poll the study until ``predicate(instances)``; returns the instances (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.study_instances(study_uid)
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout} s the study holds only {found}")
            time.sleep(0.25)
