"""The registry of output formats (``cxr_tf.inference.outputs``), looped over: every format
writes a DICOM film's outputs through ``predict --format``, refuses what it cannot encode with a
per-film error, answers the service when it says it does, and a missing extra is one line (the
command exits 2, the service answers 501), never a traceback or a 500. The conformance of each
encoding is tested in tests/integration/test_dicom_outputs.py."""

import json
import sys

import httpx
import pydicom
import pytest

from cxr_tf import predict as predict_cli
from cxr_tf.inference.extras import MissingExtra
from cxr_tf.inference.outputs import FORMATS, OutputFormat, answer_formats, get
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.testing import LiveServer, dicom_bytes, dx_dataset

from conftest import FULL_SIZE_FILMS

MC = ["--samples", "3", "--seed", "5"]


@pytest.fixture(scope="module")
def dicom_film(tmp_path_factory):
    path = tmp_path_factory.mktemp("film") / "chest.dcm"
    path.write_bytes(dicom_bytes(dx_dataset(FULL_SIZE_FILMS[0], patient_id="P-7")))
    return path


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_writes_a_dicom_film_and_names_what_it_refuses(name, two_positive_run, dicom_film, tmp_path,
                                                                    capsys):
    fmt = FORMATS[name]
    code = predict_cli.main(["--model", str(two_positive_run), *MC, "--json", "--format", name, "--out",
                             str(tmp_path), str(dicom_film), str(FULL_SIZE_FILMS[1])])
    by_file = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    written = by_file[str(dicom_film)]["outputs"]
    assert written and all(p.startswith(str(tmp_path / "chest")) for p in written)
    for path in written:
        if path.endswith(".dcm"):
            assert pydicom.dcmread(path).StudyInstanceUID == pydicom.dcmread(dicom_film).StudyInstanceUID
        else:
            assert json.loads(open(path).read())
    png = by_file[str(FULL_SIZE_FILMS[1])]
    if fmt.dicom:  # a DICOM format names the PNG film and the fix; the exit code says a film failed
        assert code == 1 and png["error"].startswith(f"{FULL_SIZE_FILMS[1]}: --format {name} needs a DICOM film")
    else:
        assert code == 0 and png["outputs"]


@pytest.mark.parametrize("name", answer_formats())
def test_answer_formats_answer_every_film(name, tiny_run, dicom_film):
    predictor = Predictor(tiny_run, samples=2)
    good, bad = predictor.predict([dicom_film, ("junk.png", b"not a film")])
    assert json.dumps(get(name).answer(good, predictor))
    answer = get(name).answer(bad, predictor)
    assert "junk.png" in json.dumps(answer)  # the error travels in the format's own shape


def test_unknown_format_lists_the_formats():
    with pytest.raises(ValueError, match="choose from json, fhir, dicom-sr, heatmap-pm, heatmap-sc"):
        get("pdf")


def test_missing_extra_is_one_line_in_the_command_and_501_in_the_service(tiny_run, dicom_film, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fhir.resources", None)  # import fails as when not installed
    with pytest.raises(MissingExtra, match=r"the fhir output needs fhir.resources: pip install 'cxr_tf\[dicom\]'"):
        FORMATS["fhir"].check()
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", str(tiny_run), "--format", "fhir", "--out", str(tmp_path), str(dicom_film)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "pip install 'cxr_tf[dicom]'" in err
    assert not list(tmp_path.iterdir())  # refused before any film was read
    live = LiveServer(create_app(Predictor(tiny_run, samples=2))).start()
    try:
        files = {"files": ("chest.dcm", dicom_film.read_bytes())}
        resp = httpx.post(f"{live.url}/api/predict?format=fhir", files=files, timeout=60)
        assert resp.status_code == 501 and "pip install 'cxr_tf[dicom]'" in resp.json()["detail"]
        resp = httpx.post(f"{live.url}/api/predict?format=dicom-sr", files=files, timeout=60)
        assert resp.status_code == 400 and "'json' or 'fhir'" in resp.json()["detail"]
    finally:
        live.stop()


NEW_FORMAT = '''"""``csv``: one line per finding, finding,probability,uncertainty."""

from cxr_tf.inference.outputs import Output


def write(result, predictor):
    rows = [f"{f},{p},{result.verdict['uncertainty'][f]}" for f, p in result.probabilities.items()]
    return [Output(".csv", "\\n".join(["finding,probability,uncertainty", *rows]) + "\\n")]


def answer(result, predictor):
    return {"file": result.file, "csv": write(result, predictor)[0].value if result.ok else result.error}
'''


def test_a_new_format_is_one_module_and_one_row(tiny_run, dicom_film, tmp_path, monkeypatch, capsys):
    """The recipe of docs/architecture.md ("Adding an output format"), done: a module in
    cxr_tf/inference/outputs/ and a row of FORMATS; predict and the service offer it unchanged."""
    import cxr_tf.inference.outputs as outputs

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "csv_lines.py").write_text(NEW_FORMAT)
    monkeypatch.setattr(outputs, "__path__", [*outputs.__path__, str(package)])  # the module "in" the package
    monkeypatch.setitem(FORMATS, "csv", OutputFormat("csv", "csv_lines", "one line per finding", answers=True))
    assert predict_cli.main(["--model", str(tiny_run), *MC, "--format", "csv", "--out", str(tmp_path / "out"),
                             str(dicom_film)]) == 0
    lines = (tmp_path / "out" / "chest.csv").read_text().splitlines()
    assert lines[0] == "finding,probability,uncertainty" and len(lines) == 15
    live = LiveServer(create_app(Predictor(tiny_run, samples=2))).start()
    try:
        resp = httpx.post(f"{live.url}/api/predict?format=csv", files={"files": ("chest.dcm", dicom_film.read_bytes())},
                          timeout=60)
        assert resp.status_code == 200 and resp.json()[0]["csv"].startswith("finding,")
    finally:
        live.stop()
