"""The label set travels with the data: records built with 5 of NIH's findings go through
build -> fit -> evaluate -> predict with those 5, in their order, everywhere."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import FULL_SIZE_FILMS
from cxr_tf import build as build_cli
from cxr_tf import evaluate as evaluate_cli
from cxr_tf import predict as predict_cli
from cxr_tf.training import config as config_lib
from cxr_tf.training import train

FINDINGS = ["Effusion", "Atelectasis", "Mass", "Cardiomegaly", "Infiltration"]


def test_five_findings_build_train_evaluate_and_predict(tmp_path, capsys):
    records = tmp_path / "records"
    assert build_cli.main(["--findings", *FINDINGS, "--image-size", "32", "--out", str(records),
                           "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((records / "manifest.json").read_text())
    assert manifest["labels"] == FINDINGS and manifest["format_version"] == 2
    assert all(list(s["label_counts"]) == FINDINGS for s in manifest["splits"].values())

    config = config_lib.load_config("simple_cnn", overrides={
        "records": str(records), "out": str(tmp_path / "runs"), "image_size": 32, "batch_size": 16,
        "verbose": 0, "phases.0.epochs": 1})
    run = train(config)
    assert json.loads((run / "labels.json").read_text()) == FINDINGS
    assert list(json.loads((run / "thresholds.json").read_text())) == FINDINGS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == FINDINGS and set(metrics["val"]["auc"]) == set(FINDINGS)
    capsys.readouterr()

    out = tmp_path / "eval"
    assert evaluate_cli.main(["--model", str(run), "--split", "test", "--bootstrap", "10", "--batch-size", "16",
                              "--out", str(out)]) == 0
    columns = pd.read_csv(out / "predictions.csv").columns.tolist()
    assert columns == ["image_index", "patient_id", *(f"p_{f}" for f in FINDINGS), *(f"y_{f}" for f in FINDINGS)]
    assert json.loads((out / "metrics.json").read_text())["test"]["labels"] == FINDINGS
    assert (out / "report.html").is_file() and (out / "auc_vs_published.png").is_file()
    capsys.readouterr()

    film = str(FULL_SIZE_FILMS[0])
    assert predict_cli.main(["--model", str(run), "--json", "--samples", "2", film]) == 0
    captured = capsys.readouterr()
    [result] = json.loads(captured.out)
    assert list(result["probabilities"]) == FINDINGS and list(result["uncertainty"]) == FINDINGS
    assert all(0.0 <= p <= 1.0 for p in result["probabilities"].values())
    # the default critical finding (Pneumothorax) is not in this label set: said, and never urgent
    assert "does not predict Pneumothorax" in captured.err and result["triage"]["level"] != "urgent"
    with pytest.raises(SystemExit) as stopped:
        predict_cli.main(["--model", str(run), "--json", "--samples", "2", film, "--critical", "Edema"])
    assert stopped.value.code == 2
    assert "unknown critical finding" in capsys.readouterr().err
    assert np.isfinite(list(result["probabilities"].values())).all()


def test_every_architecture_file_holds_only_what_differs_from_the_base():
    base = config_lib.read_yaml(config_lib.PIPELINES_DIR / "base.yaml")
    assert "arch" not in base and "base" not in config_lib.available_archs()
    for arch in config_lib.available_archs():
        own = config_lib.read_yaml(config_lib.PIPELINES_DIR / f"{arch}.yaml")
        assert own["arch"] == arch
        assert all(own[k] != base[k] for k in own if k != "arch"), f"{arch}.yaml repeats the base"
    cnn = config_lib.load_config("simple_cnn")
    assert cnn["head_units"] == 256 and len(cnn["phases"]) == 1 and cnn["weights"] is None
    fusion = config_lib.load_config("fusion", overrides={"optimizer.name": "adamw", "monitor": "val_loss"})
    assert fusion["head_units"] == 0 and fusion["optimizer"]["name"] == "adamw" and fusion["monitor"] == "val_loss"
