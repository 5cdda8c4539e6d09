"""The import command against PyTorch itself, at full size: a randomly initialised torchxrayvision
DenseNet121 saved the way xrv saves its weights (the whole pickled module, and a state dict), a
ResNet50 at 512 px with xrv's 1-channel stem (a state dict, as xrv publishes it), and both CheXNet
layouts (arnoweng's ``model.pth.tar``, jrzech's pickled ``checkpoint``). Runs only where the
``import`` extra is installed (torch, torchvision, torchxrayvision); CI has no torch and runs
``test_parity.py`` on the committed reduced fixtures instead."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FULL_SIZE_FILMS

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "torchvision", "torchxrayvision")),
    reason="the import extra (torch, torchvision, torchxrayvision) is not installed: the full-size comparison "
           "with PyTorch runs where it is (pip install -e '.[import]'); tests/importing/test_parity.py covers CI")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Full-size random checkpoints in every published layout, written by the fixture tool in a
    child process (torch must load before TensorFlow does there; BatchNorm is calibrated on the
    embedded sample films, so the outputs spread)."""
    out = tmp_path_factory.mktemp("checkpoints")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_import_fixtures.py"), "--full-size", str(out),
                    "--calibration-count", "16"],
                   check=True, capture_output=True, timeout=1800)
    return out


def import_command(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cxr_tf.import_weights", *map(str, args), "--films",
                           *map(str, FULL_SIZE_FILMS[:4])], cwd=cwd, capture_output=True, text=True, timeout=900)


def parity_of(run_dir):
    return json.loads((run_dir / "import.json").read_text())["parity"]


CASES = [  # file, extra arguments, family
    ("xrv-densenet121.pt", ["--trust-pickle"], "densenet"),
    ("xrv-densenet121-state.pt", ["--weights-set", "densenet121-res224-nih"], "densenet"),
    ("xrv-resnet50-res512.pt", ["--weights-set", "resnet50-res512-all"], "resnet"),
    ("model.pth.tar", [], "densenet"),
    ("checkpoint", ["--trust-pickle"], "densenet"),
]


@pytest.mark.parametrize("name,extra,family", CASES, ids=[c[0] for c in CASES])
def test_full_size_import_agrees_with_pytorch(checkpoints, tmp_path, name, extra, family):
    result = import_command(checkpoints / name, *extra, "--out", tmp_path / "runs", "--run-name", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "run"
    parity = parity_of(run_dir)
    assert parity["network"]["passed"] and parity["network"]["max_rel_logit_diff"] <= 1e-4
    assert parity["end_to_end"]["passed"] and parity["end_to_end"]["run_input"]["max_abs_prob_diff"] <= 2e-3
    record = json.loads((run_dir / "import.json").read_text())
    assert record["network"]["family"] == family and len(record["provenance"]["sha256"]) == 64


def test_a_pickled_module_is_refused_without_trust_pickle(checkpoints, tmp_path):
    result = import_command(checkpoints / "xrv-densenet121.pt", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and not any(tmp_path.iterdir())
    assert "loading it runs code" in result.stderr and "--trust-pickle" in result.stderr
    assert "torchxrayvision.models.DenseNet" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_state_dict_without_names_asks_for_the_weight_set(checkpoints, tmp_path):
    result = import_command(checkpoints / "xrv-densenet121-state.pt", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "--weights-set" in result.stderr
