"""An imported run is an ordinary run: written from the reduced xrv DenseNet fixture (64 px) with the
labels and operating thresholds of xrv's NIH weights, it predicts, explains, exports and evaluates
with cxr_tf alone; triage treats it as unvalidated until ``evaluate`` has measured it on the user's
records, and ``fit --init-from`` fine-tunes it (kept findings keep their head units)."""

import json

import numpy as np
import pytest

from cxr_tf import runs
from cxr_tf.models import published
from cxr_tf.training import importer

from test_parity import FILMS, load_fixture

WEIGHT_SET = published.get("densenet121-res224-nih")  # 14 trained slots of 18, with op_threshs


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    state, meta, _, _ = load_fixture("xrv-densenet")
    slots = list(WEIGHT_SET.labels)
    model, config = importer.build_model(state, "xrv-densenet", slots, meta["image_size"])
    thresholds, origin, caveats = importer.resolve_thresholds(WEIGHT_SET, {}, slots)
    provenance = {"source": "torchxrayvision", "weights_set": WEIGHT_SET.name, "file": "fixture.npz",
                  "sha256": "0" * 64, "licence": WEIGHT_SET.licence, "trained_on": WEIGHT_SET.trained_on,
                  "split": WEIGHT_SET.split, "datasets": list(WEIGHT_SET.datasets)}
    network = importer.network_description(config, "xrv-densenet", meta["image_size"])
    return importer.write_run(model, tmp_path_factory.mktemp("imported") / "saved_models", slots=slots,
                              thresholds=thresholds, threshold_origin=origin, provenance=provenance,
                              network=network, caveats=caveats)


def test_the_run_folder_holds_the_trained_findings_and_the_sources_thresholds(imported_run):
    run = runs.Run(imported_run)
    assert run.labels == WEIGHT_SET.trained == tuple(published.XRV_ORDER[:14])  # the 4 untrained slots dropped
    assert run.thresholds == pytest.approx(dict(zip(WEIGHT_SET.trained, WEIGHT_SET.op_threshs[:14])))
    assert int(run.model.outputs[0].shape[-1]) == 14 and run.arch == "densenet121"
    config, record = run.config, json.loads((imported_run / importer.IMPORT_FILE).read_text())
    assert config["imported"]["validated_on_your_data"] is False and config["input"] == {"resize": "xrv"}
    assert record["provenance"]["sha256"] == "0" * 64 and record["dropped_slots"] == 4
    assert run.metrics["training"]["imported"]["trained_on"] == "NIH ChestX-ray14" and run.metrics["val"] is None
    assert (imported_run / runs.SAVEDMODEL / "saved_model.pb").is_file()
    assert (imported_run.parent / runs.LATEST).read_text().strip() == str(imported_run)


def test_predict_and_grad_cam_work_and_triage_says_it_is_unvalidated(imported_run):
    from cxr_tf.inference.predictor import Predictor

    predictor = Predictor(imported_run, samples=2)
    evidence = predictor.evidence
    assert evidence["status"] == "unvalidated" and not evidence["critical_allowed"]
    assert any("not validated on your data" in c for c in evidence["caveats"])
    assert any("may have been in its training set" in c for c in evidence["caveats"])
    films = sorted(FILMS.glob("*.png"))[:2]
    results = predictor.predict(films)
    assert all(r.ok for r in results), [r.error for r in results]
    assert results[0].verdict["triage"] != "urgent"
    pixels = results[0].x
    assert pixels.shape == (1, 64, 64, 1)
    expected = predictor.model.predict(pixels, verbose=0)[0]
    assert [results[0].probabilities[f] for f in predictor.labels] == pytest.approx(expected.tolist(), abs=1e-4)  # rounded to 4 places
    maps = predictor.maps(results[0], ["Effusion"])
    film_map, described = maps["Effusion"]
    assert film_map.shape == (1024, 1024) and np.isfinite(film_map).all()
    assert predictor.gradcam.layer_name in ("relu", "pool4_conv", "pool3_conv", "pool2_conv")


def test_export_litert_int8_with_parity(imported_run, sample_records):
    pytest.importorskip("ai_edge_litert")
    from cxr_tf.inference.export import export_run

    report = export_run(imported_run, "litert-int8", records=sample_records)
    assert (imported_run / "export" / "litert-int8" / "parity.json").is_file()
    assert report["format"] == "litert-int8"


def test_evaluate_on_your_records_is_the_evidence_and_repeats_the_overlap_caveat(imported_run, sample_records,
                                                                                 tmp_path):
    from cxr_tf.evaluation.evaluate import evaluate_run
    from cxr_tf.inference.evidence import run_evidence

    summary = evaluate_run(imported_run, records=sample_records, split="val", out=tmp_path / "eval", n_boot=0)
    assert any("these records are from nih, which it was trained on" in c for c in summary["caveats"])
    assert "may have been in its training set" in (tmp_path / "eval" / "report.md").read_text()
    metrics = runs.read_metrics(imported_run)
    assert metrics["val"]["source"] == "evaluate" and metrics["val"]["macro_auc"] is not None
    evidence = run_evidence(metrics, ["Pneumothorax"], floor=0.0)
    assert evidence["status"] == "validated"  # measured on the user's records (a floor of 0 for a random net)
    assert not any("not validated on your data" in c for c in evidence["caveats"])
    assert any("may have been in its training set" in c for c in evidence["caveats"])


def test_fit_init_from_keeps_the_shared_findings_head(imported_run, sample_records, tmp_path):
    from cxr_tf.fit import config_from_args, build_parser
    from cxr_tf.training.trainer import train
    from cxr_tf.training.warm_start import warm_start

    labels = ["Effusion", "Hernia", "Tuberculosis"]  # two the run knows, one it does not
    start = warm_start(imported_run, labels, 64, dropout=0.2)
    source = runs.Run(imported_run)
    kernel, bias = start.get_layer("predictions").get_weights()
    old_kernel, old_bias = source.model.get_layer("predictions").get_weights()
    for j, finding in enumerate(labels[:2]):
        i = source.labels.index(finding)
        np.testing.assert_array_equal(kernel[:, j], old_kernel[:, i])
        assert bias[j] == old_bias[i]
    assert bias[2] == 0 and start.get_layer("head_dropout_1").rate == 0.2
    np.testing.assert_array_equal(start.get_layer("conv1_conv").get_weights()[0],
                                  source.model.get_layer("conv1_conv").get_weights()[0])

    args = build_parser().parse_args(["--init-from", str(imported_run), "--records", str(sample_records),
                                      "--image-size", "64", "--epochs", "1", "--batch-size", "32",
                                      "--out", str(tmp_path), "--set", "verbose=0"])
    config = config_from_args(args)
    assert config["arch"] == "densenet121" and config["init_from"] == str(imported_run) and config["weights"] is None
    run_dir = train(config)
    written = runs.read_config(run_dir)
    assert written["warm_start"]["run"] == str(imported_run)
    assert written["warm_start"]["imported"]["weights_set"] == WEIGHT_SET.name
    assert written["warm_start"]["kept"] == list(runs.read_labels(run_dir)) and written["warm_start"]["new"] == []
    history = (run_dir / runs.HISTORY).read_text()
    assert "head" in history and "finetune" in history  # both phases ran: head first, then the backbone
    assert runs.read_metrics(run_dir)["val"]["macro_auc"] is not None
