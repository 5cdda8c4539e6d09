"""Issue 18: repeatable probabilities everywhere, borderline findings, runs that must
earn the right to alarm (docs/triage.md)."""

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from cxr_tf import predict as predict_cli
from cxr_tf.data.labels import LABELS
from cxr_tf.inference.evidence import run_evidence
from cxr_tf.inference.predictor import Predictor
from cxr_tf.inference.service import create_app
from cxr_tf.inference.triage import triage
from cxr_tf.testing import LiveServer

SAMPLE = Path(__file__).resolve().parents[2] / "cxr_tf" / "sample" / "images"
FILMS = sorted(SAMPLE.glob("*.png"))[:3]


def metrics(val_macro, per_finding=0.9):
    """A trainer-style metrics.json body: every finding at ``per_finding`` on val and test."""
    block = {"macro_auc": val_macro, "auc": {f: per_finding for f in LABELS}, "excluded": {}}
    return {"val": block, "test": dict(block)}


def run_with(tiny_run, folder, body, thresholds=None):
    """A copy of ``tiny_run`` with ``metrics.json`` = body (None: none) and thresholds."""
    shutil.copytree(tiny_run, folder)
    if body is not None:
        (folder / "metrics.json").write_text(json.dumps(body))
    if thresholds is not None:
        (folder / "thresholds.json").write_text(json.dumps(thresholds))
    return folder


# ------------------------------------------------------------------ rules

def decide(p_ptx, std_ptx, evidence=None, k=2.0):
    probs = {f: 0.05 for f in LABELS} | {"Pneumothorax": p_ptx}
    stds = {f: 0.01 for f in LABELS} | {"Pneumothorax": std_ptx}
    return triage(probs, stds, {f: 0.5 for f in LABELS}, uncertainty_threshold=0.1, borderline_k=k,
                  evidence=evidence)


def test_borderline_goes_to_review_never_urgent():
    # 0.52 against 0.5 with std 0.02: within 2 std -> borderline, review
    near = decide(0.52, 0.02)
    assert near["triage"]["level"] == "review" and near["borderline"] == ["Pneumothorax"]
    assert near["findings"] == [] and "possible Pneumothorax" in near["message"]
    # below the threshold but within the band: still review, not routine
    assert decide(0.49, 0.02)["triage"]["level"] == "review"
    # outside the band: an ordinary positive, urgent
    assert decide(0.60, 0.02)["triage"]["level"] == "urgent"
    # k configurable: with k = 0.5 the same 0.52 +- 0.02 is outside the band
    assert decide(0.52, 0.02, k=0.5)["triage"]["level"] == "urgent"


def test_evidence_status_and_critical_floor():
    good = run_evidence(metrics(0.85), ("Pneumothorax",))
    assert good["status"] == "validated" and good["critical_allowed"] == ["Pneumothorax"] and good["caveats"] == []
    weak = run_evidence(metrics(0.45), ("Pneumothorax",))
    assert weak["status"] == "unvalidated" and weak["critical_allowed"] == []
    assert "0.450" in weak["caveats"][0] and "urgent" in weak["caveats"][0]
    missing = run_evidence(None, ("Pneumothorax",))
    assert missing["status"] == "unvalidated" and "metrics.json" in missing["caveats"][0]
    # a validated run whose Pneumothorax AUC is undefined or low: that finding never alarms
    undefined = metrics(0.85)
    undefined["val"]["auc"]["Pneumothorax"] = None
    for body in (undefined, metrics(0.85, per_finding=0.6)):
        ev = run_evidence(body, ("Pneumothorax",))
        assert ev["status"] == "validated" and ev["critical_allowed"] == []
        assert any("Pneumothorax is not treated as critical" in c for c in ev["caveats"])
        verdict = decide(0.95, 0.01, evidence=ev)
        assert verdict["triage"]["level"] == "review" and verdict["caveats"] == ev["caveats"]
    assert decide(0.95, 0.01, evidence=good)["triage"]["level"] == "urgent"
    assert decide(0.95, 0.01, evidence=weak)["triage"]["level"] == "review"


# ------------------------------------------------------------------ one number everywhere

@pytest.fixture(scope="module")
def alarm_runs(tiny_run, tmp_path_factory):
    """Two copies of the untrained tiny run whose thresholds make every finding
    positive (0.0): one validated by its metrics.json, one below the floor."""
    base = tmp_path_factory.mktemp("trust")
    zero = {f: 0.0 for f in LABELS}
    return {"validated": run_with(tiny_run, base / "validated", metrics(0.9), zero),
            "unvalidated": run_with(tiny_run, base / "unvalidated", metrics(0.45), zero)}


@pytest.fixture(scope="module")
def unvalidated_server(alarm_runs):
    """A real server on loopback over the unvalidated run, 8 MC samples (outside
    capsys: uvicorn binds its log handlers to the stderr of the moment)."""
    live = LiveServer(create_app(Predictor(alarm_runs["unvalidated"], samples=8))).start()
    yield live
    live.stop()


def test_same_film_same_numbers_in_cli_service_and_explain(alarm_runs, unvalidated_server, tmp_path, capsys):
    run = alarm_runs["unvalidated"]
    film = FILMS[0]
    # CLI: the film alone, then in a batch with others (another position, other batch mates)
    assert predict_cli.main(["--model", str(run), "--json", "--samples", "8", str(film)]) == 0
    alone = json.loads(capsys.readouterr().out)[0]
    assert predict_cli.main(["--model", str(run), "--json", "--samples", "8", *map(str, FILMS[::-1])]) == 0
    batch = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    assert batch[str(film)] == alone
    assert np.ptp(list(alone["uncertainty"].values())) > 0  # a real MC spread, not one deterministic pass
    # service: the same film sent several times to a real server
    url = unvalidated_server.url
    answers = [httpx.post(f"{url}/api/predict", files=[("files", (film.name, film.read_bytes()))],
                          timeout=60).json()[0] for _ in range(4)]
    model_info = httpx.get(f"{url}/api/model").json()
    for answer in answers:
        assert {k: v for k, v in answer.items() if k != "file"} == {k: v for k, v in alone.items() if k != "file"}
    assert model_info["status"] == "unvalidated" and model_info["caveats"] == alone["caveats"] != []
    # explain reports the same probabilities (same samples through the same code path)
    out = tmp_path / "explain"
    report = explain_cli_run(run, film, out, samples=8)
    assert report["probabilities"] == alone["probabilities"]


def explain_cli_run(run, film, out, samples):
    from cxr_tf.inference.explain import explain_films

    return explain_films(Predictor(run, samples=samples), [film], out, findings=["Effusion"])["films"][0]


def test_unvalidated_run_never_urgent_and_says_why(alarm_runs, capsys):
    film = [str(FILMS[0])]
    assert predict_cli.main(["--model", str(alarm_runs["validated"]), "--json", "--samples", "4", *film]) == 0
    validated = json.loads(capsys.readouterr().out)[0]
    assert validated["triage"]["level"] == "urgent" and validated["caveats"] == []
    assert predict_cli.main(["--model", str(alarm_runs["unvalidated"]), "--json", "--samples", "4", *film]) == 0
    unvalidated = json.loads(capsys.readouterr().out)[0]
    assert unvalidated["triage"]["level"] == "review" and "Pneumothorax" in unvalidated["findings"]
    assert unvalidated["caveats"] and "unvalidated model" in unvalidated["caveats"][0]
    assert unvalidated["probabilities"] == validated["probabilities"]  # same weights, same film, same draws
    assert predict_cli.main(["--model", str(alarm_runs["unvalidated"]), "--samples", "4", *film]) == 0
    table = capsys.readouterr().out
    assert table.startswith("CAVEAT: unvalidated model") and "URGENT" not in table


# ------------------------------------------------------------------ Grad-CAM that says when it shows nothing

@pytest.mark.parametrize("arch", ["simple_cnn", "multimodal"])
def test_trained_from_scratch_models_give_localising_maps_at_smallest_size(arch):
    # The ImageNet backbones and the fusion network are checked just built at their
    # 32 px minimum in test_explain.py (a short training of each costs ~1 min on 2
    # cores); the from-scratch CNNs train in seconds, so here they are trained.
    import keras

    from conftest import settle_batch_norm
    from cxr_tf.data.synthetic import make_films
    from cxr_tf.inference.gradcam import GradCAM, describe_map
    from cxr_tf.models import ARCHITECTURES, MIN_CAM_GRID, build_model

    spec = ARCHITECTURES[arch]
    size = spec.min_size
    keras.utils.set_random_seed(0)
    images, labels, _ = make_films(128, size, seed=0)
    x = images[..., None].astype(np.float32)
    inputs = {"image": x, "meta": np.zeros((len(x), 5), np.float32)} if spec.multimodal else x
    model = build_model(arch, image_size=size, weights=None, dropout=0.2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", jit_compile=False)
    model.fit(inputs, labels.astype(np.float32), batch_size=32, epochs=4, verbose=0)
    settle_batch_norm(model, inputs)
    cam = GradCAM(model, arch=arch)
    deepest = model.get_layer(spec.gradcam_layer).output.shape[1]
    assert deepest < MIN_CAM_GRID and cam.layer_name != spec.gradcam_layer  # the fallback was needed
    test, test_labels, _ = make_films(8, size, seed=1)
    meta = np.zeros((len(test), 5), np.float32) if spec.multimodal else None
    maps, _ = cam.cams(test, LABELS, meta)
    present = [describe_map(maps[i, k], cam.layer_name) for i, k in zip(*np.nonzero(test_labels))]
    assert all(d["grid"][0] >= MIN_CAM_GRID for d in present)
    ok = sum(d["status"] == "ok" for d in present)
    assert ok >= 0.8 * len(present), [d["status"] for d in present]


def test_empty_flat_and_coarse_maps_are_named():
    from cxr_tf.inference.gradcam import describe_map, map_status

    assert map_status(np.zeros((8, 8))) == "empty"
    assert map_status(np.full((8, 8), 0.7)) == "flat"
    assert map_status(np.eye(3)) == "coarse"
    peaked = np.zeros((8, 8))
    peaked[2, 5] = 1.0
    assert map_status(peaked) == "ok" and describe_map(peaked, "conv2_relu")["note"] is None
    assert "3x3" in describe_map(np.eye(3), "relu")["note"]


def test_explain_names_an_empty_map_in_json_and_caption(tiny_run, tmp_path):
    # the untrained tiny run's final conv map on a black film: zero everywhere
    # (ReLU of BatchNorm at its initial statistics of a constant image)
    import cv2

    from cxr_tf.inference.explain import explain_films
    from cxr_tf.inference.gradcam import MAP_NOTES

    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((64, 64), np.uint8))
    # the input gate would refuse the black film (blank); this test wants its empty map, so the gate is off
    report = explain_films(Predictor(tiny_run, samples=2, gate=False), [black, FILMS[0]], tmp_path / "out",
                           findings=["Effusion"])
    maps = {Path(e["file"]).name: e["maps"]["Effusion"] for e in report["films"]}
    assert maps["black.png"]["status"] in ("empty", "flat"), maps
    assert maps["black.png"]["note"] == MAP_NOTES[maps["black.png"]["status"]]
    assert sum(report["maps"].values()) == 2


# ------------------------------------------------------------------ training: one AUC, random weights train

def test_progress_bar_auc_is_the_macro_of_metrics_json():
    from cxr_tf.training.auc import MacroAUC
    from cxr_tf.evaluation.metrics import auc_summary

    rng = np.random.default_rng(0)
    y = (rng.random((400, len(LABELS))) < 0.3).astype(np.float32)
    y[:, 3] = 0  # a finding without a positive in this split
    p = np.clip(0.35 * y + rng.random(y.shape) * 0.65, 0, 1).astype(np.float32)
    ours = MacroAUC()
    ours.update_state(y, p)
    summary = auc_summary(y, p)["macro_auc"]
    assert float(ours.result()) == pytest.approx(summary, abs=1e-4)
    import keras

    plain = keras.metrics.AUC(multi_label=True, num_labels=len(LABELS))  # what the bar showed before
    plain.update_state(y, p)
    assert abs(float(plain.result()) - summary) > 0.03


def test_auc_figure_shows_findings_below_chance(tmp_path):
    import cv2

    from cxr_tf.evaluation.plots import auc_bars

    path = auc_bars({f: {"auc": 0.3, "auc_ci": None} for f in LABELS}, tmp_path / "auc.png")
    image = cv2.imread(str(path))
    steelblue = np.all(np.abs(image.astype(int) - (222, 196, 176)) <= 3, axis=-1)  # BGR lightsteelblue
    assert steelblue.sum() > 14 * 50  # every bar drawn (an axis from 0.5 hid them all)
