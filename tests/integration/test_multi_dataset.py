"""Several datasets together: a run trained on NIH + CheXpert records at once (the union of their
harmonised findings, a finding one dataset does not label missing for its films, never a
negative), and external validation of that run on MIMIC-CXR, PadChest and VinDr-CXR records
(the shared findings evaluated, the others listed with the reason, internal and external AUCs
side by side). Releases in their published formats from real films: tests/releases.py."""

import json

import numpy as np
import pandas as pd
import pytest
from releases import write_chexpert_release, write_mimic_release, write_padchest_release, write_vindr_release
from sklearn.metrics import roc_auc_score

from cxr_tf import evaluate as evaluate_cli
from cxr_tf import fit as fit_cli
from cxr_tf.data import harmonise
from cxr_tf.data.builder import build_records
from cxr_tf.data.labels import LABELS
from cxr_tf.data import manifest
from cxr_tf.data.pipeline import make_dataset
from cxr_tf.data.sources import Sources
from cxr_tf.evaluation.evaluate import read_predictions

# The builder warns about val/test splits without positives for some finding (their AUC cannot be
# measured); on fixtures of a few dozen films that is expected, and the manifest's "warnings" hold it.
pytestmark = pytest.mark.filterwarnings("ignore:split .* its AUC cannot be measured there:UserWarning")

CHEXPERT_ONLY = ("Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Fracture", "Support Devices",
                 "Pleural Other")
SHARED_WITH_CHEXPERT = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation",
                        "Edema")


def build(dataset, release, out):
    build_records(dataset=dataset, data_dir=release, out=out, image_size=64, workers=1, progress=False,
                  log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def chexpert_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    return build("chexpert", write_chexpert_release(root / "release", films=60), root / "records")


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, sample_records, chexpert_records):
    out = tmp_path_factory.mktemp("merged_runs")
    code = fit_cli.main(["--arch", "simple_cnn", "--records", f"{sample_records},{chexpert_records}",
                         "--ratio", "2,1", "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                         "--weights", "none",
                         "--out", str(out), "--set", "verbose=0", "--set", "augment=false"])
    assert code == 0
    [run] = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("simple_cnn-")]
    return run


def test_sources_map_each_folder_to_the_union_with_missing(sample_records, chexpert_records):
    sources = Sources(f"{sample_records},{chexpert_records}")
    assert sources.labels == (*LABELS, *CHEXPERT_ONLY)  # NIH's 14, then CheXpert's own, vocabulary order
    chexpert_own = manifest.read(chexpert_records).labels
    assert "Pleural Effusion" in chexpert_own and "Effusion" in sources.labels  # records keep their names
    nih_only = [sources.labels.index(f) for f in LABELS if f not in SHARED_WITH_CHEXPERT]
    chexpert_columns = [sources.labels.index(f) for f in CHEXPERT_ONLY]
    # all films from one folder at a time (proportions 1:0 and 0:1): a finding it does not label is -1
    for weights, missing, known in (([1, 0], chexpert_columns, nih_only), ([0, 1], nih_only, [])):
        ds = make_dataset(Sources(f"{sample_records},{chexpert_records}", weights=weights),
                          "train", 16, image_size=32, training=True, augment=False, seed=0)
        y = np.concatenate([labels.numpy() for _, labels in ds.take(6)])
        assert (y[:, missing] == -1).all()
        assert (y[:, known] >= 0).all()
    # evaluation reads the folders one after the other, every film once
    y = np.concatenate([labels.numpy() for _, labels in make_dataset(sources, "val", 8, image_size=32, training=False)])
    assert len(y) == sources.num_examples("val")
    with pytest.raises(ValueError, match="none labels Hernia2"):
        Sources(f"{sample_records},{chexpert_records}", findings=["Effusion", "Hernia2"])


def test_one_age_standardisation_for_several_folders_and_for_evaluation(sample_records, chexpert_records):
    """The metadata input's age is standardised with the training films' mean and std pooled over
    the folders (what fit writes to config.json as ``metadata``), and evaluation of a run uses the
    run's, not those of the records it reads."""
    from cxr_tf import runs
    from cxr_tf.evaluation.evaluate import predict_split
    from cxr_tf.evaluation.explore import table_from_records
    from cxr_tf.models import build_model

    folders = [sample_records, chexpert_records]
    sources = Sources(",".join(map(str, folders)))
    manifests = [manifest.read(f) for f in folders]
    ages = np.concatenate([table_from_records(f).query("split == 'train'")["age"].to_numpy(np.float64)
                           for f in folders])
    ages = ages[ages >= 0]  # -1: unknown, left out of the statistics
    mean, std = sources.age_stats()
    assert (mean, std) == pytest.approx((ages.mean(), ages.std()), rel=1e-6)
    assert sources.describe()["metadata"] == {"age_mean": mean, "age_std": std}
    x, _ = next(iter(make_dataset(sources, "val", 64, image_size=32, training=False, multimodal=True)))
    # the age column under the pooled statistics, for the films of both folders
    films = pd.concat([table_from_records(f).query("split == 'val'") for f in folders], ignore_index=True)
    known = films["age"].to_numpy(np.float64)[:len(x["meta"])]
    expected = (np.where(known < 0, mean, np.clip(known, 0, 120)) - mean) / std
    np.testing.assert_allclose(x["meta"].numpy()[:, 0], expected, rtol=1e-5, atol=1e-5)

    # evaluation: a run's own statistics, whatever the records'
    assert runs.trained_age_stats({"metadata": {"age_mean": mean, "age_std": std}}) == (mean, std)
    assert runs.trained_age_stats({}) is None
    model = build_model("multimodal", image_size=32, weights=None)
    own = predict_split(model, chexpert_records, "val", 16)[3]
    same = predict_split(model, chexpert_records, "val", 16, age_stats=manifests[1].age_stats())[3]
    other = predict_split(model, chexpert_records, "val", 16, age_stats=(mean + 30, std / 2))[3]
    np.testing.assert_allclose(same, own, atol=1e-6)
    assert np.abs(other - own).max() > 1e-4


def test_a_run_on_nih_and_chexpert_learns_the_union_with_masked_missing_labels(merged_run, sample_records,
                                                                               chexpert_records):
    labels = json.loads((merged_run / "labels.json").read_text())
    assert tuple(labels) == (*LABELS, *CHEXPERT_ONLY)
    config = json.loads((merged_run / "config.json").read_text())
    assert config["records_datasets"] == ["nih", "chexpert"] and config["labels"] == labels
    assert config["records_ratio"] == [2.0, 1.0]
    # one age standardisation for the metadata input over both folders (predict reads it back)
    manifests = [manifest.read(sample_records), manifest.read(chexpert_records)]
    n = np.array([m.splits["train"].count for m in manifests], float)
    means = np.array([m.age_mean for m in manifests])
    stds = np.array([m.age_std for m in manifests])
    pooled = (n * means).sum() / n.sum()
    assert config["metadata"]["age_mean"] == pytest.approx(pooled)
    spread = np.sqrt((n * (stds ** 2 + (means - pooled) ** 2)).sum() / n.sum())
    assert config["metadata"]["age_std"] == pytest.approx(spread)
    assert config["num_examples"]["train"] == n.sum()
    history = (merged_run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1].lower()  # a finite loss with 6 + 7 findings missing
    metrics = json.loads((merged_run / "metrics.json").read_text())
    # a finding counts where it is labelled: Hernia only in NIH films, Support Devices only in CheXpert's
    assert set(metrics["val"]["auc"]) == set(labels)
    for finding, reason in metrics["val"]["excluded"].items():
        assert reason in ("no positive films in this split", "no negative films in this split",
                          "not labelled in this split"), (finding, reason)


@pytest.mark.parametrize("dataset", ["mimic-cxr", "padchest", "vindr-cxr"])
def test_external_validation_on_other_datasets(merged_run, tmp_path, dataset):
    writer = {"mimic-cxr": write_mimic_release, "padchest": write_padchest_release,
              "vindr-cxr": write_vindr_release}[dataset]
    records = build(dataset, writer(tmp_path / "release"), tmp_path / "records")
    metrics_before = (merged_run / "metrics.json").read_bytes()
    # --model may name the run through the `latest` file fit writes beside it
    assert evaluate_cli.main(["--model", str(merged_run.parent / "latest"), "--records", str(records),
                              "--split", "test", "--bootstrap", "20", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    external = result["external"]
    run_labels = json.loads((merged_run / "labels.json").read_text())
    theirs = harmonise.common_labels(manifest.read(records))
    assert external["shared"] == [f for f in run_labels if f in theirs]
    for finding in run_labels:
        if finding not in theirs:
            assert "not labelled in these records" in external["left_out"][finding]
    for finding in theirs:
        if finding not in run_labels:
            assert "not trained on it" in external["left_out"][finding]
    # the AUCs are those of the known films of each shared finding (sklearn, from predictions.csv)
    _, _, y_prob, y_true = read_predictions(tmp_path / "eval" / "predictions.csv", external["shared"])
    for k, finding in enumerate(external["shared"]):
        known = y_true[:, k] >= 0
        if len(set(y_true[known, k])) == 2:
            assert result["per_finding"][finding]["auc"] == pytest.approx(
                roc_auc_score(y_true[known, k], y_prob[known, k]), abs=1e-9)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## External validation" in report and "internal test ROC-AUC" in report
    assert "Published results" not in report  # NIH's published AUCs are of another population
    assert (merged_run / "metrics.json").read_bytes() == metrics_before  # the internal evidence is untouched


def test_explore_reads_another_datasets_records(chexpert_records, tmp_path):
    from cxr_tf.evaluation.explore import explore

    summary = explore(tmp_path / "explore", records=chexpert_records)
    records = manifest.read(chexpert_records)
    own = list(records.labels)
    assert summary["labels"] == own and summary["films"] == sum(s.count for s in records.splits.values())
    for name in own:  # prevalence among the films where the finding is labelled (blank cells are missing)
        known = sum(s.known(name) for s in records.splits.values())
        assert summary["prevalence"][name] == (summary["label_counts"][name] / known if known else None)
