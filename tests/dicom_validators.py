"""The validators the DICOM objects are held to in tests (docs/conformance.md): dciodvfy
(dicom3tools) for every object, and pixelmed's DicomSRValidator, the validator IHE Connectathons
use for AI Results, for every SR. Each is None when not installed (CI installs both: .ci/run);
tests skip with the reason then."""

import shutil
import subprocess
from pathlib import Path

DCIODVFY = shutil.which("dciodvfy")
PIXELMED_JAR = next((p for p in (Path("/usr/share/java/pixelmed.jar"),) if p.exists()), None)
JAVA = shutil.which("java")
PIXELMED = str(PIXELMED_JAR) if PIXELMED_JAR and JAVA else None
VALIDATE_SRS = Path(__file__).resolve().parent / "pixelmed" / "ValidateSRs.java"
# the SR templates are large XPath expressions; the JDK's default limits stop the validator
JDK_XPATH = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
SKIP_DCIODVFY = "dciodvfy not installed (Debian package dicom3tools; .ci/run installs it): conformance unchecked"
SKIP_PIXELMED = ("pixelmed DicomSRValidator not installed (Debian package pixelmed-apps and a JDK; .ci/run installs "
                 "them): SR template conformance unchecked")


def dciodvfy(path):
    """(errors, warnings) lines dciodvfy reports for ``path``."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def pixelmed(paths):
    """{path: (errors, warnings)} of pixelmed's DicomSRValidator on each SR in ``paths``.

    One JVM for all of them (the validator compiles its template stylesheets once per JVM, which
    costs most of a call): ``ValidateSRs.java`` runs with the JDK's single-file source launcher;
    without a JDK compiler, one call of the validator's own main per file."""
    paths = [str(p) for p in paths]
    proc = subprocess.run([JAVA, *JDK_XPATH, "-cp", PIXELMED, str(VALIDATE_SRS), *paths], capture_output=True,
                          text=True, timeout=1200, check=False)
    if proc.returncode == 0 and "=== FILE" in proc.stdout:
        reports, current = {}, None
        for line in proc.stdout.splitlines():
            if line.startswith("=== FILE "):
                current = line[len("=== FILE "):]
                reports[current] = []
            elif current is not None:
                reports[current].append(line)
    else:  # a JRE without javac: the validator's main, once per file
        reports = {}
        for path in paths:
            one = subprocess.run([JAVA, *JDK_XPATH, "-cp", PIXELMED, "com.pixelmed.validate.DicomSRValidator", path],
                                 capture_output=True, text=True, timeout=600, check=False)
            reports[path] = (one.stdout + one.stderr).splitlines()
    if set(reports) != set(paths):
        raise RuntimeError(f"pixelmed gave no report for {sorted(set(paths) - set(reports))}: {proc.stderr[-2000:]}")
    out = {}
    for path, lines in reports.items():
        errors = [ln for ln in lines if ln.startswith("Error")]
        if not any("IOD validation complete" in ln for ln in lines):  # it stopped before the end
            errors.append(f"pixelmed did not finish: {lines[-5:]}")
        out[path] = errors, [ln for ln in lines if ln.startswith("Warning")]
    return out


LOCAL_SCHEME = "99CXRTF"
LOCAL_FINDINGS = {"PLEURAL_THICK"}
"""The only codes our reports may carry in our local scheme: findings with no published code
(``outputs/structured.py``); every other concept is published (``outputs/dicom_sr.py``)."""


def local_codes(ds):
    """{code value} of every coded entry of ``ds`` (walked whole) in our local scheme."""
    found = set()

    def walk(dataset):
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    if item.get("CodingSchemeDesignator") == LOCAL_SCHEME and "CodeValue" in item:
                        found.add(item.CodeValue)
                    walk(item)

    walk(ds)
    return found


def assert_no_local_code_warnings(path):
    """dciodvfy warns about our local scheme only where a finding has no published code: the SR at
    ``path`` carries no other local code, and without one no warning names the scheme."""
    import pydicom

    local = local_codes(pydicom.dcmread(path))
    assert local <= LOCAL_FINDINGS, (path, local)
    if DCIODVFY is not None and not local:
        assert not [w for w in dciodvfy(path)[1] if LOCAL_SCHEME in w], path


def assert_valid_srs(paths):
    """Every SR in ``paths``: dciodvfy 0 errors and no warning about a local code other than a finding's;
    pixelmed 0 errors and no warning at all (docs/conformance.md lists none). Skips (pytest) with the
    reason when a validator is missing, after checking what it can."""
    import pytest

    if DCIODVFY is None:
        pytest.skip(SKIP_DCIODVFY)
    for path in paths:
        errors, _ = dciodvfy(path)
        assert errors == [], (path, errors)
        assert_no_local_code_warnings(path)
    if PIXELMED is None:
        pytest.skip(SKIP_PIXELMED)
    for path, (errors, warnings) in pixelmed(paths).items():
        assert errors == [] and warnings == [], (path, errors, warnings)
