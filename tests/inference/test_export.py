"""Portable installs and models (docs/deployment.md): model.keras without cxr_tf, the
SavedModel's serve_bytes signature, LiteRT / ONNX exports with parity.json, predict on
the exported backends, and the wheel installed into a fresh virtual environment.

Small on purpose: simple_cnn at 32 px (the ``learned_run`` fixture), a few real films."""

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_tf.data.images import read_image, to_square

REPO = Path(__file__).resolve().parents[2]
FILMS = sorted((REPO / "cxr_tf" / "sample" / "images").glob("*.png"))[:16]


def clean_env(**extra):
    """The environment without PYTHONPATH (so the checkout is not importable)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CONFIG")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def film_bytes():
    """Encoded real films covering every resize path of serve_bytes at 32 px: the NIH
    PNGs as shipped (128 px, 4x area), 64 px PNGs (OpenCV's 2x fast path), a 100 px one
    (non-integer area weights), a non-square colour JPEG and a 16-bit PNG."""
    out = [f.read_bytes() for f in FILMS[:8]]
    for f in FILMS[8:12]:
        out.append(cv2.imencode(".png", to_square(read_image(f), 64))[1].tobytes())
    grey = read_image(FILMS[12])
    out.append(cv2.imencode(".png", to_square(grey, 100))[1].tobytes())
    colour = cv2.cvtColor(grey[:, 16:], cv2.COLOR_GRAY2BGR)
    colour[..., 0] //= 2  # not grey: exercises the luma weights
    out.append(cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    out.append(cv2.imencode(".png", read_image(FILMS[13]).astype(np.uint16) * 64 + 100)[1].tobytes())
    return out


# --------------------------------------------------------------------------- model.keras
def test_model_keras_loads_and_predicts_without_cxr_tf(learned_run, tmp_path):
    import keras

    x = np.stack([to_square(read_image(f), 32) for f in FILMS[:6]]).astype(np.float32)[..., None]
    np.save(tmp_path / "x.npy", x)
    expected = keras.models.load_model(learned_run / "model.keras", compile=False).predict(x, verbose=0)
    script = (
        "import sys; sys.modules['cxr_tf'] = None\n"  # any import of cxr_tf now fails
        "try:\n    import cxr_tf\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('cxr_tf importable')\n"
        "import numpy as np, keras\n"
        f"m = keras.models.load_model({str(learned_run / 'model.keras')!r})\n"
        "np.save('p.npy', m.predict(np.load('x.npy'), verbose=0))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-6)


# --------------------------------------------------------------------------- TF Serving signature
def test_serve_bytes_matches_predict_on_real_films(learned_run):
    import tensorflow as tf

    from cxr_tf.inference.predictor import Predictor

    loaded = tf.saved_model.load(str(learned_run / "savedmodel"))  # written by fit
    assert {"serve", "serve_bytes"} <= set(loaded.signatures)
    assert [s.name for s in loaded.signatures["serve_bytes"].structured_input_signature[1].values()] == ["image_bytes"]
    data = film_bytes()
    served = loaded.signatures["serve_bytes"](image_bytes=tf.constant(data))
    served = np.asarray(next(iter(served.values())))
    predictor = Predictor(learned_run, samples=1)
    # the deterministic pass on the pixels predict prepares (FilmResult.x)
    prepared = predictor.predict([(f"film{i}", d) for i, d in enumerate(data)])
    expected = np.concatenate([predictor.sampler.deterministic(r.x) for r in prepared])
    assert np.abs(served - expected).max() <= 1e-5
    assert np.ptp(expected, axis=0).max() > 0.01  # the films differ, so a wrong pixel path would show


# --------------------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def exports(learned_run, tmp_path_factory):
    """{format: (folder, parity dict)} of the three portable exports of learned_run."""
    from cxr_tf.inference.export import export_run

    root = tmp_path_factory.mktemp("exports")
    return {fmt: (root / fmt, export_run(learned_run, fmt, out=root / fmt)) for fmt in ("litert", "litert-int8", "onnx")}


@pytest.mark.parametrize("fmt", ["litert", "litert-int8", "onnx"])
def test_export_parity(exports, fmt):
    folder, report = exports[fmt]
    written = json.loads((folder / "parity.json").read_text())
    assert written["max_abs_diff"] == report["max_abs_diff"] and written["films"] == 96
    assert set(written["auc"]["export"]) == set(written["auc"]["keras"]) and len(written["auc"]["keras"]) == 14
    assert written["macro_auc"]["keras"] > 0.7  # learned something, so the AUC delta means something
    if fmt == "litert-int8":
        assert abs(written["macro_auc"]["delta"]) <= 0.01
        int8, float32 = (exports[f][0] / "backbone.tflite" for f in ("litert-int8", "litert"))
        assert int8.stat().st_size < float32.stat().st_size / 3  # the head (head.npz) stays float32
    else:
        assert written["max_abs_diff"] <= 1e-4
    assert written["ms_per_film"]["export"] > 0 and written["size_bytes"] > 0


@pytest.mark.parametrize("fmt", ["litert-int8", "onnx"])
def test_mc_dropout_on_exported_backends(exports, learned_run, fmt):
    import keras

    from cxr_tf.inference.export import PortableModel
    from cxr_tf.inference.uncertainty import MCSampler

    model = PortableModel(exports[fmt][0], seed=0)
    x = np.stack([to_square(read_image(f), 32) for f in FILMS[:4]]).astype(np.float32)[..., None]
    mean, std = model(x, samples=400)
    assert mean.shape == std.shape == (4, 14) and (std > 0.01).any()
    assert model.backbone_calls == 4  # the backbone ran once per film; only the head was sampled
    seeded = [model(x[order], samples=10, seeds=[7, 8, 9, 10][:len(order)]) for order in ([0, 1, 2, 3], [0, 1])]
    np.testing.assert_array_equal(seeded[0][0][:2], seeded[1][0])  # a film's draws depend on its seed only
    # the same distribution as Keras' MC dropout. Measured (onnx, 4 films x 14 findings): two Keras
    # samplers with different seeds differ by up to 0.042 at 400 draws, 0.016 at 4,000, 0.008 at
    # 20,000, and NumPy vs Keras the same; 10,000 draws keep the noise well under 0.03. The export's
    # own deterministic gap (parity max_abs_diff: int8 quantisation) is allowed on top.
    mean, std = model(x, samples=10_000)
    keras_mean, keras_std = MCSampler(keras.models.load_model(learned_run / "model.keras"), seed=0)(x, samples=10_000)
    tolerance = 0.03 + exports[fmt][1]["max_abs_diff"]
    assert np.abs(mean - keras_mean).max() < tolerance and np.abs(std - keras_std).max() < tolerance


def test_failed_export_leaves_no_half_written_folder(exports, learned_run, tmp_path, monkeypatch):
    import shutil

    from cxr_tf.inference import export

    def failing_converter(backbone, path, representative=None):  # as an int8 conversion that dies midway
        Path(path).write_bytes(b"half a flatbuffer")
        raise RuntimeError("int8 conversion failed")

    out = tmp_path / "export" / "litert-int8"
    with monkeypatch.context() as patch:
        patch.setattr(export, "to_litert", failing_converter)
        with pytest.raises(RuntimeError, match="int8 conversion failed"):
            export.export_run(learned_run, "litert-int8", out=out)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no folder, no hidden leftovers
        shutil.copytree(exports["litert-int8"][0], out)  # an earlier complete export of the same format
        (out / "earlier.txt").write_text("from the earlier export")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(RuntimeError, match="int8 conversion failed"):
            export.export_run(learned_run, "litert-int8", out=out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # kept, untouched
        assert list(out.parent.iterdir()) == [out]
    export.export_run(learned_run, "litert-int8", out=out)  # a complete export replaces it whole
    assert sorted(p.name for p in out.iterdir()) == ["backbone.tflite", "export.json", "head.npz", "parity.json"]
    assert list(out.parent.iterdir()) == [out]
    assert json.loads((out / "parity.json").read_text())["folder"] == str(out)


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(learned_run, tmp_path):
    from cxr_tf.inference.export import ExportError, export_run

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export folder"):
        export_run(learned_run, "onnx", out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("fmt, module", [("onnx", "tf2onnx"), ("onnx", "onnxruntime"),
                                         ("litert-int8", "ai_edge_litert")])
def test_missing_extra_names_the_extra_to_install(learned_run, tmp_path, monkeypatch, fmt, module):
    from cxr_tf.inference.export import export_run
    from cxr_tf.inference.extras import MissingExtra

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    what = "ONNX" if fmt == "onnx" else "LiteRT"
    with pytest.raises(MissingExtra) as error:
        export_run(learned_run, fmt, out=tmp_path / fmt)
    assert str(error.value) == f"{what} export needs {module}: pip install 'cxr_tf[export]'"
    assert isinstance(error.value, ImportError) and error.value.name == module
    assert not (tmp_path / fmt).exists()


@pytest.mark.parametrize("fmt, module, extra", [("onnx", "onnxruntime", "onnx"),
                                                ("litert-int8", "ai_edge_litert", "litert")])
def test_portable_backend_without_its_runtime_names_the_extra(exports, monkeypatch, fmt, module, extra):
    from cxr_tf.inference.export import PortableModel
    from cxr_tf.inference.extras import MissingExtra

    monkeypatch.setitem(sys.modules, module, None)
    what = "ONNX" if fmt == "onnx" else "LiteRT"
    with pytest.raises(MissingExtra, match=re.escape(f"The {what} backend needs {module}: "
                                                     f"pip install 'cxr_tf[{extra}]'")):
        PortableModel(exports[fmt][0])


def test_predict_command_on_the_onnx_backend(exports, learned_run, capsys):
    from cxr_tf import predict

    films = [str(f) for f in FILMS[:3]]
    assert predict.main(["--model", str(learned_run), "--json", "--samples", "400", *films]) == 0
    keras_out = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    assert predict.main(["--model", str(learned_run), "--json", "--samples", "400", "--backend", "onnx",
                         "--export", str(exports["onnx"][0]), *films]) == 0
    onnx_out = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    # both are 400-draw MC means of the same model with their own dropout draws: they may differ by
    # their standard errors. 5 of them (two-sided 5.7e-7 per value, 42 values; measured up to 1.9 here,
    # about 2.9 in the CI run that failed the fixed 0.06 this replaces), + 1e-4 for the JSON's rounding
    for film in films:
        a, b = keras_out[film]["probabilities"], onnx_out[film]["probabilities"]
        sa, sb = keras_out[film]["uncertainty"], onnx_out[film]["uncertainty"]
        for k in a:
            error = ((sa[k] ** 2 + sb[k] ** 2) / 400) ** 0.5
            assert abs(a[k] - b[k]) <= 5 * error + 1e-4, (film, k, a[k], b[k], error)
        assert any(v > 0 for v in onnx_out[film]["uncertainty"].values())


def test_backend_without_export_is_a_clear_error(learned_run, capsys):
    from cxr_tf import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", str(learned_run), "--backend", "litert", str(FILMS[0])])
    assert exit_info.value.code == 2
    assert "cxr_tf.export" in capsys.readouterr().err


# --------------------------------------------------------------------------- the wheel
def test_wheel_installs_and_runs_build_fit_predict_from_an_empty_folder(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, env=clean_env(), cwd=tmp_path, timeout=300)
    [wheel] = dist.glob("cxr_tf-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the heavy dependencies (TensorFlow, ...) are reused from this interpreter, not downloaded again
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   env=clean_env(), cwd=work, timeout=300)
    bin_dir = venv / "bin"

    def run(*args):
        result = subprocess.run([str(bin_dir / args[0]), *map(str, args[1:])], cwd=work, env=clean_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{args[0]}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    where = subprocess.run([str(python), "-c", "import cxr_tf; print(cxr_tf.__file__)"], cwd=work, env=clean_env(),
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where  # the installed wheel, not the checkout
    run("cxr-tf-build", "--out", "records", "--image-size", "32", "--no-progress")
    run("cxr-tf-fit", "--arch", "simple_cnn", "--records", "records", "--image-size", "32", "--epochs", "1",
        "--batch-size", "32", "--out", "runs", "--set", "augment=false", "--set", "verbose=0")
    [run_dir] = [p for p in (work / "runs").iterdir() if p.is_dir()]
    (work / "film.png").write_bytes(FILMS[0].read_bytes())
    out = json.loads(run("cxr-tf-predict", "--model", run_dir, "--json", "--samples", "3", "film.png"))
    assert out[0]["file"] == "film.png" and len(out[0]["probabilities"]) == 14
    assert "usage" in run("cxr-tf-export", "--help").lower()


def test_int8_export_runs_without_tensorflow(exports, tmp_path):
    # the clinic-PC case: NumPy + the LiteRT runtime, TensorFlow and Keras not importable
    x = np.stack([to_square(read_image(f), 32) for f in FILMS[:3]]).astype(np.float32)[..., None]
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'tf_keras'):\n    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from cxr_tf.inference.export import PortableModel\n"
        f"model = PortableModel({str(exports['litert-int8'][0])!r}, seed=0)\n"
        "mean, std = model(np.load('x.npy'), samples=20)\n"
        "np.save('p.npy', model.deterministic(np.load('x.npy'))); print(float(std.max()))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 0  # MC dropout sampled
    from cxr_tf.inference.export import PortableModel

    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), PortableModel(exports["litert-int8"][0]).deterministic(x),
                               atol=1e-6)
