"""Missing labels (-1, ``metrics.MISSING``) count nowhere: not in the training losses, not in
the training AUC, not in any evaluation metric; with no -1 every value is the unmasked one."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import average_precision_score, brier_score_loss, confusion_matrix, roc_auc_score

from cxr_tf.data.labels import LABELS, NUM_LABELS
from cxr_tf.evaluation import evaluate, metrics, thresholds
from cxr_tf.training import config as config_lib
from cxr_tf.training.auc import MacroAUC
from cxr_tf.training.losses import LOSSES, MaskedLoss, WeightedBinaryCrossentropy, make_loss, prevalence_weights

MISSING = metrics.MISSING
PREVALENCE = np.linspace(0.05, 0.5, NUM_LABELS)
BASE_LOSS = config_lib.read_yaml(Path(config_lib.PIPELINES_DIR) / f"{config_lib.BASE}.yaml")["loss"]
"""pipelines/base.yaml's loss block: every loss parameter the config allows, at its default."""
LOSS_CONFIGS = [{**BASE_LOSS, "name": name} for name in LOSSES]
"""One loss block per registered loss (``losses.LOSSES``), its parameters from base.yaml: a new
loss is tested by every masked-loss test below without editing them."""


def _batch(missing_fraction, seed=0, n=32):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, NUM_LABELS)) < 0.3).astype(np.float32)
    p = rng.uniform(0.01, 0.99, y.shape).astype(np.float32)
    y[rng.random(y.shape) < missing_fraction] = MISSING
    return y, p


def _unmasked_loss(config, smoothing, prevalence):
    """The unmasked loss of ``config`` for findings of ``prevalence``. The losses of the table in
    losses.py's docstring are built here from Keras (or our weighted BCE), independently of
    ``make_loss``; any other registered loss is the inner loss ``make_loss`` wraps, so for it the
    tests check the masking (``MaskedLoss``) alone."""
    if config["name"] == "focal":
        return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=config["alpha"],
                                                    gamma=config["gamma"], label_smoothing=smoothing)
    if config["name"] == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=smoothing)
    if config["name"] == "weighted_bce":
        pos, neg = prevalence_weights(prevalence, config["min_prevalence"])
        return WeightedBinaryCrossentropy(pos, neg, label_smoothing=smoothing)
    return make_loss({**config, "label_smoothing": smoothing}, prevalence).loss


# --------------------------------------------------------------------------- losses
def test_every_registered_loss_is_a_valid_config_and_builds():
    for config in LOSS_CONFIGS:
        checked = config_lib.load_config("simple_cnn", overrides={"loss.name": config["name"]})["loss"]
        assert checked == config, f"loss {config['name']!r}: the validated block {checked} is not base.yaml's {config}"
        assert isinstance(make_loss(checked, PREVALENCE), MaskedLoss), config["name"]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("config", LOSS_CONFIGS, ids=lambda c: c["name"])
def test_masked_loss_is_the_unmasked_loss_without_missing_labels(config, smoothing):
    y, p = _batch(0.0)
    masked = make_loss({**config, "label_smoothing": smoothing}, PREVALENCE)
    assert isinstance(masked, MaskedLoss)
    assert float(masked(y, p)) == pytest.approx(float(_unmasked_loss(config, smoothing, PREVALENCE)(y, p)), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("config", LOSS_CONFIGS, ids=lambda c: c["name"])
def test_masked_loss_is_the_loss_over_known_labels_only(config, smoothing):
    y, p = _batch(0.3, seed=1)
    rows, cols = np.nonzero(y != MISSING)
    # The known elements as one film of len(rows) "findings": Keras' mean over the last axis is then the
    # mean over the known elements; a loss with per-finding parameters gets each element's finding's.
    reference = _unmasked_loss(config, smoothing, PREVALENCE[cols])
    expected = float(reference(y[rows, cols][None], p[rows, cols][None]))
    masked = make_loss({**config, "label_smoothing": smoothing}, PREVALENCE)
    assert float(masked(y, p)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("config", LOSS_CONFIGS, ids=lambda c: c["name"])
def test_missing_labels_have_zero_gradient_and_an_all_missing_batch_has_zero_loss(config):
    loss = make_loss({**config, "label_smoothing": 0.1}, PREVALENCE)
    y, p = _batch(0.3, seed=2)
    for labels in (y, np.full_like(y, MISSING)):
        q = tf.Variable(p)
        with tf.GradientTape() as tape:
            value = loss(labels, q)
        grad = tape.gradient(value, q).numpy()
        assert np.all(grad[labels == MISSING] == 0.0)
        assert np.all(np.isfinite(grad)) and np.isfinite(float(value))
    assert float(value) == 0.0  # everything missing: 0, not NaN, and (above) no gradient anywhere


def test_masked_loss_config_round_trip_and_compiled_graph():
    y, p = _batch(0.3, seed=3, n=8)
    for config in LOSS_CONFIGS:
        loss = make_loss({**config, "label_smoothing": 0.05}, PREVALENCE)
        again = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
        assert isinstance(again, MaskedLoss) and type(again.loss) is type(loss.loss)
        assert again.name == config["name"]
        assert float(again(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)
    # compiled (graph mode): a model whose output is the input reports the masked loss of the batch
    inputs = keras.Input((NUM_LABELS,))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=loss)
    assert model.test_on_batch(p, y) == pytest.approx(float(loss(y, p)), rel=1e-5)


# --------------------------------------------------------------------------- training AUC
def test_macro_auc_masks_missing_labels_like_scikit_learn():
    rng = np.random.default_rng(4)
    y = (rng.random((600, NUM_LABELS)) < 0.3).astype(np.float32)
    p = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1).astype(np.float32)
    y[rng.random(y.shape) < 0.3] = MISSING
    y[:, 0] = MISSING  # not labelled at all
    y[y[:, 1] == 1, 1] = MISSING  # no known positive
    weight = rng.integers(1, 4, len(y)).astype(np.float32)  # per-film weights combine with the mask

    def sklearn_macro(sample_weight=None):
        values = []
        for k in range(NUM_LABELS):
            rows = y[:, k] != MISSING
            if len(np.unique(y[rows, k])) == 2:
                values.append(roc_auc_score(y[rows, k], p[rows, k],
                                            sample_weight=None if sample_weight is None else sample_weight[rows]))
        assert len(values) == NUM_LABELS - 2
        return np.mean(values)

    # 100 000 evenly spaced thresholds: films closer than 1e-5 share a bin (the module docstring)
    for sample_weight in (None, weight):
        auc = MacroAUC()
        for start in range(0, len(y), 200):  # several batches accumulate
            end = start + 200
            auc.update_state(y[start:end], p[start:end],
                             sample_weight=None if sample_weight is None else sample_weight[start:end])
        assert float(auc.result()) == pytest.approx(sklearn_macro(sample_weight), abs=1e-4)


# --------------------------------------------------------------------------- evaluation metrics
@pytest.fixture(scope="module")
def partly_labelled():
    """240 films of 80 patients, ~30% of labels missing, Hernia never labelled, ties present."""
    rng = np.random.default_rng(5)
    n = 240
    y = (rng.random((n, NUM_LABELS)) < np.linspace(0.1, 0.4, NUM_LABELS)).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1).round(2)
    y[rng.random(y.shape) < 0.3] = MISSING
    y[:3, :] = 1
    y[3:6, :] = 0
    y[:, LABELS.index("Hernia")] = MISSING
    return y, p, np.repeat(np.arange(n // 3), 3)


def test_per_finding_metrics_use_known_rows_only(partly_labelled):
    y, p, patients = partly_labelled
    summary = metrics.summarize(y, p, patients, {n: 0.5 for n in LABELS}, n_boot=50, seed=0)
    defined = []
    for k, name in enumerate(LABELS):
        row, rows = summary["per_finding"][name], y[:, k] != MISSING
        yk, pk = y[rows, k], p[rows, k]
        assert row["n_known"] == rows.sum() and row["n_positive"] + row["n_negative"] == rows.sum()
        if name == "Hernia":
            continue
        defined.append(k)
        assert row["auc"] == pytest.approx(roc_auc_score(yk, pk))
        assert row["average_precision"] == pytest.approx(average_precision_score(yk, pk))
        assert row["brier"] == pytest.approx(brier_score_loss(yk, pk))
        assert row["prevalence"] == pytest.approx(yk.mean())
        tn, fp, fn, tp = confusion_matrix(yk, pk >= 0.5, labels=[0, 1]).ravel()
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
        assert row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
    known = y != MISSING
    assert summary["micro"]["auc"] == pytest.approx(roc_auc_score(y[known], p[known]))
    assert summary["micro"]["average_precision"] == pytest.approx(average_precision_score(y[known], p[known]))
    assert summary["macro"]["auc"] == pytest.approx(np.mean([summary["per_finding"][LABELS[k]]["auc"]
                                                             for k in defined]))
    assert metrics.auc_summary(y, p)["macro_auc"] == pytest.approx(summary["macro"]["auc"])


def test_a_finding_without_any_label_is_undefined_and_left_out(partly_labelled):
    y, p, patients = partly_labelled
    summary = metrics.summarize(y, p, patients, {n: 0.5 for n in LABELS}, n_boot=20)
    hernia = summary["per_finding"]["Hernia"]
    assert hernia["defined"] is False and hernia["undefined_reason"] == metrics.NOT_LABELLED
    assert hernia["n_known"] == 0 and hernia["n_positive"] == 0 and hernia["n_negative"] == 0
    for key in ("auc", "average_precision", "prevalence", "brier", "ece", "sensitivity", "specificity"):
        assert hernia[key] is None, key
    assert hernia["auc_ci"] == [None, None] and (hernia["tp"], hernia["fp"], hernia["tn"], hernia["fn"]) == (0,) * 4
    assert summary["macro"]["excluded"] == {"Hernia": metrics.NOT_LABELLED}
    assert summary["macro"]["n_findings"] == NUM_LABELS - 1 and "Hernia" in summary["macro"]["note"]
    assert metrics.auc_summary(y, p)["excluded"] == {"Hernia": metrics.NOT_LABELLED}
    assert thresholds.choose_thresholds(y, p)["Hernia"] == thresholds.FALLBACK_THRESHOLD
    assert thresholds.threshold_fallbacks(y) == {"Hernia": metrics.NOT_LABELLED}
    json.dumps(summary, allow_nan=False)


def test_films_without_labels_change_nothing(partly_labelled):
    """Adding films of the same patients whose labels are all missing leaves every per-finding
    metric, the bootstrap intervals, the thresholds and the micro scores exactly as they were."""
    y, p, patients = partly_labelled
    rng = np.random.default_rng(6)
    extra = 60
    y2 = np.vstack([y, np.full((extra, NUM_LABELS), MISSING)])
    p2 = np.vstack([p, rng.random((extra, NUM_LABELS)).round(2)])
    patients2 = np.concatenate([patients, rng.choice(patients, extra)])
    for method in thresholds.THRESHOLD_METHODS:
        chosen = thresholds.choose_thresholds(y, p, method)
        assert thresholds.choose_thresholds(y2, p2, method) == chosen
    a = metrics.summarize(y, p, patients, chosen, n_boot=100, seed=3)
    b = metrics.summarize(y2, p2, patients2, chosen, n_boot=100, seed=3)
    assert b["num_examples"] == a["num_examples"] + extra
    for key in ("per_finding", "macro", "micro", "bootstrap", "num_patients"):
        assert b[key] == a[key], key


def test_choose_thresholds_per_finding_on_known_rows(partly_labelled):
    y, p, _ = partly_labelled
    for method in thresholds.THRESHOLD_METHODS:
        chosen = thresholds.choose_thresholds(y, p, method)
        for k, name in enumerate(LABELS[:3]):
            rows = y[:, k] != MISSING
            alone = thresholds.choose_thresholds(y[rows][:, [k]], p[rows][:, [k]], method, labels=[name])
            assert chosen[name] == alone[name]


def test_check_arrays_accepts_missing_and_names_other_values():
    y = np.zeros((3, NUM_LABELS))
    y[0, 1] = MISSING
    p = np.full((3, NUM_LABELS), 0.5)
    assert metrics.check_arrays(y, p)[0][0, 1] == MISSING
    y[2, 4] = -2
    with pytest.raises(ValueError, match=r"row 2, Mass: label -2.0 is not 0, 1 or -1 \(missing\)"):
        metrics.check_arrays(y, p)


def test_predictions_csv_round_trips_missing_labels(partly_labelled, tmp_path):
    y, p, patients = partly_labelled
    names = [f"{i:08d}_000.png" for i in range(len(y))]
    path = evaluate.write_predictions(tmp_path / "predictions.csv", names, patients, p.astype(np.float32), y)
    got_names, got_patients, got_p, got_y = evaluate.read_predictions(path)
    assert got_names == names and np.array_equal(got_patients, patients)
    assert np.array_equal(got_y, y) and (got_y == MISSING).sum() > 0
    np.testing.assert_array_equal(got_p.astype(np.float32), p.astype(np.float32))  # float32 exactly


def test_evaluation_report_of_a_partly_labelled_split(partly_labelled, tmp_path):
    y, p, patients = partly_labelled
    names = [f"{i:08d}_000.png" for i in range(len(y))]
    summary = evaluate.evaluate_predictions(tmp_path, names, patients, y, p, {n: 0.5 for n in LABELS},
                                            n_boot=20)
    md = (tmp_path / "report.md").read_text()
    assert "| finding | labelled | positives |" in md and "**Missing labels.**" in md
    assert f"Hernia: {metrics.NOT_LABELLED}" in md
    hernia_row = next(line for line in md.splitlines() if line.startswith("| Hernia |"))
    assert hernia_row.startswith("| Hernia | 0 | 0 | – | undefined (not labelled in this split) |")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["excluded"] == {"Hernia": metrics.NOT_LABELLED}
    assert summary["per_finding"]["Mass"]["n_known"] == (y[:, LABELS.index("Mass")] != MISSING).sum()


def test_exploration_counts_positives_among_labelled_films():
    import pandas as pd

    from cxr_tf.evaluation.explore import summarize_table

    y = np.zeros((4, NUM_LABELS), int)
    y[:, 0] = [1, 1, MISSING, 0]  # 2 positives of 3 labelled films
    y[:, 1] = MISSING  # never labelled
    y[0, 2] = 1
    table = pd.DataFrame(y, columns=list(LABELS)).assign(
        image_index=[f"{i}.png" for i in range(4)], patient_id=[1, 1, 2, 3], age=40, sex="F", view="PA",
        split=["train", "train", "val", "val"])
    summary = summarize_table(table)
    assert summary["label_counts"][LABELS[0]] == 2 and summary["prevalence"][LABELS[0]] == pytest.approx(2 / 3)
    assert summary["label_counts"][LABELS[1]] == 0 and summary["prevalence"][LABELS[1]] is None
    assert summary["findings_per_film"] == {"0": 2, "2": 1, "1": 1}
    assert np.array(summary["cooccurrence"])[0, 2] == 1 and np.array(summary["cooccurrence"]).min() == 0
    assert summary["splits"]["val"]["label_counts"][LABELS[0]] == 0
