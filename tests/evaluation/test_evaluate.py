"""Issue 6: metrics against scikit-learn, patient bootstrap, undefined findings,
validation-only thresholds, plots, report links, and an end-to-end evaluation of a
tiny real model on real (synthetic-content) TFRecords."""

import json

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, brier_score_loss, confusion_matrix, f1_score,
                             roc_auc_score)

from cxr_tf import evaluate as evaluate_cli
from cxr_tf.evaluation import evaluate, literature, metrics, plots, report
from cxr_tf.data.labels import LABELS, NUM_LABELS


@pytest.fixture(scope="module")
def arrays():
    """Fixed multi-label case: 240 films of 80 patients, scores informative, ties present."""
    rng = np.random.default_rng(123)
    n = 240
    y = (rng.random((n, NUM_LABELS)) < np.linspace(0.05, 0.4, NUM_LABELS)).astype(int)
    y[:3, :] = 1  # every finding has positives
    y[3:6, :] = 0  # and negatives
    p = np.clip(0.35 * y + 0.65 * rng.random((n, NUM_LABELS)), 0, 1).round(2)  # rounding makes ties
    patients = np.repeat(np.arange(n // 3), 3)
    return y, p, patients


def test_metric_values_match_scikit_learn(arrays):
    y, p, patients = arrays
    summary = metrics.summarize(y, p, patients, {n: 0.5 for n in LABELS}, n_boot=50, seed=0)
    for k, name in enumerate(LABELS):
        row = summary["per_finding"][name]
        assert row["auc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
        assert row["average_precision"] == pytest.approx(average_precision_score(y[:, k], p[:, k]))
        assert row["brier"] == pytest.approx(brier_score_loss(y[:, k], p[:, k]))
        assert row["prevalence"] == pytest.approx(y[:, k].mean())
        tn, fp, fn, tp = confusion_matrix(y[:, k], p[:, k] >= 0.5, labels=[0, 1]).ravel()
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
        assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert row["ppv"] == pytest.approx(tp / (tp + fp))
        assert row["npv"] == pytest.approx(tn / (tn + fn))
        assert row["f1"] == pytest.approx(f1_score(y[:, k], p[:, k] >= 0.5))
    assert summary["macro"]["auc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert summary["micro"]["auc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert summary["micro"]["average_precision"] == pytest.approx(average_precision_score(y, p, average="micro"))


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    # bins: [0,.1): p .05 y 0 -> gap .05 (1 film); [.1,.2): mean p .15, frac 0.5 -> .35 (2); [.9,1]: .975 vs 1 (2)
    expected = (1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5
    assert metrics.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)
    assert metrics.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_patient_auc_kernel_equals_weighted_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 90)
    s = rng.random(90).round(1)
    patient = rng.integers(0, 30, 90)
    counts = rng.integers(0, 4, (6, 30))
    got = metrics.PatientAUC(y, s, patient, 30)(counts)
    want = [roc_auc_score(y, s, sample_weight=c[patient]) for c in counts]
    np.testing.assert_allclose(got, want)


def test_bootstrap_is_seeded_and_resamples_patients(arrays):
    y, p, patients = arrays
    a = metrics.bootstrap_auc(y, p, patients, n_boot=200, seed=7)
    b = metrics.bootstrap_auc(y, p, patients, n_boot=200, seed=7)
    c = metrics.bootstrap_auc(y, p, patients, n_boot=200, seed=8)
    assert a == b
    assert a["per_finding"] != c["per_finding"]
    assert a["unit"] == "patient" and a["num_patients"] == 80
    for k, name in enumerate(LABELS):
        ci = a["per_finding"][name]
        assert ci["low"] <= roc_auc_score(y[:, k], p[:, k]) <= ci["high"]
    # Doubling every film of every patient leaves a patient bootstrap unchanged
    # (same patients drawn, same AUCs); a film-level bootstrap would narrow.
    d = metrics.bootstrap_auc(np.repeat(y, 2, axis=0), np.repeat(p, 2, axis=0), np.repeat(patients, 2),
                              n_boot=200, seed=7)
    for name in LABELS:
        assert d["per_finding"][name]["low"] == pytest.approx(a["per_finding"][name]["low"])
        assert d["per_finding"][name]["high"] == pytest.approx(a["per_finding"][name]["high"])


def test_undefined_findings_are_reported_not_zero(arrays):
    y, p, patients = arrays
    y = y.copy()
    y[:, LABELS.index("Hernia")] = 0
    y[:, LABELS.index("Edema")] = 1
    summary = metrics.summarize(y, p, patients, {n: 0.5 for n in LABELS}, n_boot=20)
    hernia, edema = summary["per_finding"]["Hernia"], summary["per_finding"]["Edema"]
    assert hernia["defined"] is False and hernia["undefined_reason"] == metrics.NO_POSITIVES
    assert edema["defined"] is False and edema["undefined_reason"] == metrics.NO_NEGATIVES
    for row in (hernia, edema):
        assert row["auc"] is None and row["average_precision"] is None and row["auc_ci"] == [None, None]
        assert row["brier"] is not None
    assert hernia["sensitivity"] is None and edema["specificity"] is None
    macro = summary["macro"]
    assert macro["excluded"] == {"Hernia": metrics.NO_POSITIVES, "Edema": metrics.NO_NEGATIVES}
    assert macro["n_findings"] == 12 and "Hernia" in macro["note"] and "Edema" in macro["note"]
    defined = [k for k, n in enumerate(LABELS) if n not in ("Hernia", "Edema")]
    assert macro["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, k], p[:, k]) for k in defined]))
    assert macro["f1"] == pytest.approx(np.mean([summary["per_finding"][LABELS[k]]["f1"] for k in defined]))
    json.dumps(summary)  # None -> null, no NaN


def test_choose_thresholds_maximise_the_criterion(arrays):
    y, p, _ = arrays
    f1_t = evaluate.choose_thresholds(y, p)  # F1 is the default
    youden_t = evaluate.choose_thresholds(y, p, method="youden")
    for k, name in enumerate(LABELS):
        truth = y[:, k].astype(bool)
        pred = p[:, k][None, :] >= np.unique(p[:, k])[:, None]  # (candidates, films)
        tp, fp, fn = (pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1)
        f1 = 2 * tp / (2 * tp + fp + fn)
        j = tp / truth.sum() - fp / (~truth).sum()
        assert f1_score(truth, p[:, k] >= f1_t[name]) == pytest.approx(f1.max())
        chosen = p[:, k] >= youden_t[name]
        assert chosen[truth].mean() - chosen[~truth].mean() == pytest.approx(j.max())
    with pytest.raises(ValueError, match="youden"):
        evaluate.choose_thresholds(y, p, method="accuracy")
    y0 = y.copy()
    y0[:, 0] = 0
    assert evaluate.choose_thresholds(y0, p)[LABELS[0]] == evaluate.FALLBACK_THRESHOLD
    assert evaluate.threshold_fallbacks(y0) == {LABELS[0]: metrics.NO_POSITIVES}


def test_check_arrays_names_row_and_finding():
    y = np.zeros((3, NUM_LABELS))
    p = np.full((3, NUM_LABELS), 0.5)
    p[2, 4] = np.nan
    with pytest.raises(ValueError, match="row 2, Mass"):
        metrics.check_arrays(y, p)


def test_literature_table_shipped_with_package():
    table = literature.load_literature()
    assert len(table) == 15 and list(table.columns[3:17]) == list(LABELS)
    fusion = table[table["model"] == "Fusion network (fusion study)"].iloc[0]
    assert fusion["macro"] == pytest.approx(0.8156)
    comparison = literature.comparison_table({n: 0.7 for n in LABELS}, 0.7, "ours", "stratified", table)
    assert comparison.iloc[0]["split"] == "ours: patient-grouped iterative stratification"
    text = literature.format_comparison(comparison)
    assert "not comparable" in text and "EVA-X-B" in text


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_plot(tmp_path):
    """The fit issue calls this on every run's history.csv (two phases)."""
    history = tmp_path / "history.csv"
    history.write_text("epoch,auc,loss,val_auc,val_loss,learning_rate,phase\n"
                       + "".join(f"{e},{0.6 + e / 50},{1 - e / 10},{0.6 + e / 60},{1 - e / 12},"
                                 f"{1e-3 / (e + 1)},{'head' if e < 2 else 'all'}\n" for e in range(5)))
    _assert_png(plots.training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(FileNotFoundError, match="history"):
        plots.training_curves(tmp_path / "missing.csv", tmp_path / "x.png")


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real simple_cnn (32 px, untrained) saved as a run folder, and synthetic records."""
    from cxr_tf.models import build_model
    from cxr_tf.data.synthetic import write_synthetic_records

    root = tmp_path_factory.mktemp("eval_run")
    records = root / "records"
    write_synthetic_records(records, n_train=8, n_val=40, n_test=48, image_size=32, seed=3)
    run = root / "run"
    run.mkdir()
    model = build_model("simple_cnn", image_size=32)
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"arch": "simple_cnn", "image_size": 32, "records": str(records),
                                                 "split_method": "synthetic"}))
    (run / "labels.json").write_text(json.dumps(list(LABELS)))
    (run / "history.csv").write_text("epoch,auc,loss,val_auc,val_loss\n0,0.5,0.7,0.5,0.7\n1,0.55,0.6,0.52,0.65\n")
    return run, records


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    run, records = tiny_run
    out = tmp_path_factory.mktemp("eval_out")
    result = evaluate.evaluate_run(run, records, split="test", out=out, batch_size=16, n_boot=100)
    return run, records, out, result


def test_evaluate_run_writes_every_output(evaluated):
    run, _, out, result = evaluated
    for name in ("predictions.csv", "metrics.json", "thresholds.json", "report.md", "report.html",
                 "roc_curves.png", "pr_curves.png", "auc_vs_published.png", "reliability.png",
                 "training_curves.png", "label_distribution.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            _assert_png(out / name)
    names, pids, p, y = evaluate.read_predictions(out / "predictions.csv")
    assert len(names) == 48 == result["num_examples"] and len(set(names)) == 48
    assert p.shape == y.shape == (48, NUM_LABELS) and ((p >= 0) & (p <= 1)).all()
    saved_file = json.loads((out / "metrics.json").read_text())
    # one metrics.json schema: the eval folder's file and the run's share the split block
    assert saved_file["format_version"] == 2 and saved_file["labels"] == list(LABELS)
    saved = saved_file["test"]
    assert saved["split"] == "test" and saved["bootstrap"]["unit"] == "patient"
    assert saved["macro_auc"] == pytest.approx(saved["macro"]["auc"]) and saved["source"] == "evaluate"
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert run_metrics["test"]["macro_auc"] == pytest.approx(saved["macro_auc"])
    assert run_metrics["test"]["auc"] == saved["auc"] and run_metrics["test"]["auc_ci"] == saved["auc_ci"]
    assert saved["per_finding"]["Atelectasis"]["auc"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    # thresholds were chosen on validation and saved with the model for predict
    assert json.loads((run / "thresholds.json").read_text()) == saved["thresholds"]["values"]
    assert saved["thresholds"]["source"] == "val"


def test_thresholds_come_from_validation_only(evaluated):
    import keras

    run, records, _, result = evaluated
    model = keras.models.load_model(run / "model.keras")
    _, _, y_val, p_val = evaluate.predict_split(model, records, "val", batch_size=16)
    assert result["thresholds"]["values"] == pytest.approx(evaluate.choose_thresholds(y_val, p_val))
    _, _, y_test, p_test = evaluate.predict_split(model, records, "test", batch_size=16)
    assert result["thresholds"]["values"] != pytest.approx(evaluate.choose_thresholds(y_test, p_test))


def test_report_links_resolve_and_html_is_self_contained(evaluated):
    _, _, out, result = evaluated
    md = out / "report.md"
    links = report.markdown_links(md)
    assert len(links) >= 6
    for link in links:
        assert (out / link).is_file(), link
    text = md.read_text()
    assert "not comparable" in text and "Fusion network (fusion study)" in text and '"arch": "simple_cnn"' in text
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(links)
    assert 'src="' not in html.replace('src="data:image/png;base64,', "")


def test_cli_reuses_saved_thresholds(evaluated, tmp_path, capsys):
    run, records, _, _ = evaluated
    before = (run / "thresholds.json").read_text()
    assert evaluate_cli.main(["--model", str(run), "--records", str(records), "--split", "test",
                          "--out", str(tmp_path), "--bootstrap", "20", "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "macro ROC-AUC" in printed and "CheXNet" in printed and "synthetic" in printed
    saved = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert saved["thresholds"]["method"] == "saved"
    assert (run / "thresholds.json").read_text() == before
