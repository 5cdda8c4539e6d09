"""``python -m cxr_tf.score`` (``cxr_tf.inference.scoring``): an archive scored on Apache Beam
(RunInference around the Predictor) gives each film ``predict --json``'s result: the processed films
in the predictions table, every film without a verdict (unreadable, refused by the input gate) in
the error table with predict's reason, and one FHIR Bundle per film. Beam's in-process runner."""

import csv
import json
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from conftest import twelve_bit_dicom
from cxr_tf import predict as predict_cli
from cxr_tf import score as score_cli
from cxr_tf.data.datasets.nih import SAMPLE_DIR
from cxr_tf.inference import scoring

SAMPLES = "4"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three sample films, a DICOM film with its ids, an inverted film (the gate refuses it), and a
    truncated PNG, a text file and an empty file."""
    folder = tmp_path_factory.mktemp("archive")
    names = sorted(p.name for p in (SAMPLE_DIR / "images").glob("*.png"))[:4]
    for name in names[:3]:
        (folder / name).write_bytes((SAMPLE_DIR / "images" / name).read_bytes())
    film = cv2.imread(str(SAMPLE_DIR / "images" / names[3]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "inverted.png"), 255 - film)
    (folder / "study.dcm").write_bytes(twelve_bit_dicom(PatientID="P-0042", StudyInstanceUID="1.2.826.0.1.42"))
    raw = (folder / names[0]).read_bytes()
    (folder / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (folder / "report.txt").write_text("not a film\n")
    (folder / "empty.png").write_bytes(b"")
    return folder


def read_csv(out, name):
    rows = [row for path in sorted(Path(out).glob(f"{name}-*.csv")) for row in csv.DictReader(path.open())]
    return {Path(row["film"]).name: row for row in rows}


def test_score_gives_predict_results_and_an_error_table(tiny_run, archive, tmp_path, capsys):
    films = sorted(str(p) for p in archive.iterdir())
    assert predict_cli.main(["--model", str(tiny_run), "--samples", SAMPLES, "--json", *films]) == 1
    expected = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}

    out = tmp_path / "scores"
    summary = scoring.score(tiny_run, [str(archive / "*")], out, {"samples": int(SAMPLES), "batch_size": 3},
                            fhir=True, log=lambda *_: None)
    predictions, failed = read_csv(out, "predictions"), read_csv(out, "not_processed")
    assert sorted([*predictions, *failed]) == sorted(expected)  # every film in exactly one table
    assert (summary["processed"], summary["not_processed"]) == (len(predictions), len(failed)) == (4, 4)

    for name, row in predictions.items():
        want = expected[name]
        assert want["status"] == "processed"
        for finding, p in want["probabilities"].items():
            assert abs(float(row[f"p_{finding}"]) - p) <= 1e-6, (name, finding)
            assert abs(float(row[f"std_{finding}"]) - want["uncertainty"][finding]) <= 1e-6, (name, finding)
        assert row["level"] == want["triage"]["level"] and row["action"] == want["triage"]["action"]
        assert row["findings"] == "; ".join(want["findings"]) and row["message"] == want["message"]
        assert row["caveats"] == " | ".join(want["caveats"]) and want["caveats"]  # the untrained run says so
        assert (row["gate_passed"], float(row["gate_score"])) == ("True", pytest.approx(want["gate"]["score"]))
    assert predictions["study.dcm"]["patient_id"] == "P-0042"
    assert predictions["study.dcm"]["study_instance_uid"] == "1.2.826.0.1.42"

    assert {name: row["reason"] for name, row in failed.items()} == {
        "inverted.png": "inverted", "truncated.png": "unreadable", "report.txt": "unreadable",
        "empty.png": "unreadable"}
    for name, row in failed.items():
        assert row["error"] == expected[name]["error"] and row["reason"] == expected[name]["reason"]
    assert failed["inverted.png"]["gate_passed"] == "False"

    bundles = [json.loads(line) for path in out.glob("fhir-*.ndjson") for line in path.read_text().splitlines()]
    reports = [e["resource"] for b in bundles for e in b["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert len(bundles) == 8 and sorted(r["status"] for r in reports) == ["cancelled"] * 4 + ["preliminary"] * 4


def test_the_command_writes_parquet_and_refuses_bad_input(tiny_run, archive, tmp_path, capsys):
    out = tmp_path / "scores"
    films = [str(archive / "study.dcm"), str(archive / "truncated.png")]
    assert score_cli.main(["--model", str(tiny_run), "--samples", SAMPLES, "--input", *films, "--out", str(out),
                           "--format", "parquet"]) == 0
    assert "2 film(s) on Beam FnApiRunner" in capsys.readouterr().out
    predictions = pq.read_table(sorted(out.glob("predictions-*.parquet"))).to_pylist()
    failed = pq.read_table(sorted(out.glob("not_processed-*.parquet"))).to_pylist()
    assert [r["film"] for r in predictions] == films[:1] and [r["film"] for r in failed] == films[1:]
    assert predictions[0]["patient_id"] == "P-0042" and isinstance(predictions[0]["p_Effusion"], float)
    assert failed[0]["reason"] == "unreadable" and failed[0]["gate_passed"] is None

    # usage errors: one line, exit 2, before any film is read
    for argv, message in ((["--input", str(archive / "nothing-*.png")], "matches no file"),
                          (["--input", films[0], "--no-such-option=1"], "unknown Beam pipeline option(s)"),
                          (["--input", films[0], "--critical", "Dragons"], "Dragons")):
        with pytest.raises(SystemExit) as stopped:
            score_cli.main(["--model", str(tiny_run), "--out", str(tmp_path / "r"), *argv])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
