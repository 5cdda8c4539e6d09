"""What each export costs and saves against model.keras on CPU: size, ms per film
(batch 1), films per second at batch 32, macro AUC delta on the validation split.

    python tools/bench_export.py --model RUN [--formats litert litert-int8 onnx] [--repeats 20] [--reuse]
    python tools/bench_export.py --train densenet121 --image-size 64 --out /tmp/bench   # train first

``--train ARCH`` first trains ARCH briefly on synthetic planted-finding films
(``cxr_tf.data.synthetic``: 512 train, 128 val films; augmentation off, binary
cross-entropy) with ``cxr_tf.training.train``, so the AUC delta is measured on a model
that has learned something. Each format is exported with ``cxr_tf.inference.export``
into ``RUN/export/<format>`` (parity.json there). Timings: median of ``--repeats``
calls after a warm-up; Keras runs the compiled model, exports run backbone + NumPy
head (the path ``--backend`` uses), all threads of this machine.

Prints one table row per format with the Keras baseline beside it (ratios), then
the last line ``litert_int8_speedup=<r> litert_int8_size_ratio=<r>
litert_int8_auc_delta=<r> onnx_speedup=<r>`` (speedup = Keras ms / export ms at
batch 1; size ratio = model.keras bytes / export bytes).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_mc import median_seconds  # noqa: E402  (the same timing as the MC benchmark)




def train_synthetic(arch, image_size, out, epochs, learning_rate, batch_size):
    """Train ``arch`` on fresh synthetic records under ``out``; returns the run folder."""
    from cxr_tf.data.synthetic import write_synthetic_records
    from cxr_tf.training import config as config_lib
    from cxr_tf.training.trainer import train

    out = Path(out)
    write_synthetic_records(out / "records", n_train=512, n_val=128, n_test=64, image_size=image_size, seed=0)
    overrides = {"records": str(out / "records"), "out": str(out / "runs"), "image_size": image_size,
                 "batch_size": batch_size, "loss.name": "bce", "verbose": 0, "augment": False, "weights": None,
                 "early_stopping.patience": 100, "reduce_lr.patience": 100, "dropout": 0.2}
    config = config_lib.load_config(arch, overrides=overrides)
    for i, phase in enumerate(config["phases"]):  # one phase of training, the backbone trainable
        phase.update(epochs=epochs if i == len(config["phases"]) - 1 else 0, learning_rate=learning_rate,
                     train_backbone=True)
    config = config_lib.validate(config)
    return train(config)


def bench(run_dir, formats, repeats, reuse=False):
    """{name: {"bytes", "ms", "fps32", "auc_delta"}} for "keras" and each format."""
    import keras
    import tensorflow as tf

    from cxr_tf.inference.export import PortableModel, export_dir, export_run, folder_bytes

    run_dir = Path(run_dir)
    from cxr_tf.models import model_input_spec

    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    size, _ = model_input_spec(model)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (32, size, size, 1)).astype(np.float32)
    keras_fn = tf.function(lambda v: model(v, training=False))
    rows = {"keras": {"bytes": folder_bytes(run_dir / "model.keras"),
                      "ms": 1000 * median_seconds(lambda: keras_fn(batch[:1]).numpy(), repeats),
                      "fps32": 32 / median_seconds(lambda: keras_fn(batch).numpy(), max(3, repeats // 4)),
                      "auc_delta": 0.0, "macro_auc": None}}
    for fmt in formats:
        parity_file = export_dir(run_dir, fmt) / "parity.json"
        if reuse and parity_file.is_file():  # an earlier export of this run: time it, do not convert again
            report = json.loads(parity_file.read_text())
        else:
            report = export_run(run_dir, fmt)
        portable = PortableModel(export_dir(run_dir, fmt))
        rows["keras"]["macro_auc"] = report["macro_auc"]["keras"]
        rows[fmt] = {"bytes": report["size_bytes"],
                     "ms": 1000 * median_seconds(lambda: portable.deterministic(batch[:1]), repeats),
                     "fps32": 32 / median_seconds(lambda: portable.deterministic(batch), max(3, repeats // 4)),
                     "auc_delta": report["macro_auc"]["delta"], "macro_auc": report["macro_auc"]["export"],
                     "max_abs_diff": report["max_abs_diff"]}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder (or use --train)")
    parser.add_argument("--train", metavar="ARCH", help="train ARCH on synthetic films first")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="bench_export", help="folder for --train's records and run")
    parser.add_argument("--formats", nargs="+", default=["litert", "litert-int8", "onnx"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reuse", action="store_true",
                        help="time exports already in RUN/export/<format> (with parity.json) instead of converting")
    args = parser.parse_args(argv)
    if not args.model and not args.train:
        parser.error("pass --model RUN or --train ARCH")
    run_dir = args.model or train_synthetic(args.train, args.image_size, args.out, args.epochs, args.learning_rate,
                                            args.batch_size)
    rows = bench(run_dir, args.formats, args.repeats, reuse=args.reuse)
    base = rows["keras"]
    print(f"run {run_dir}  (validation macro AUC of model.keras: {base['macro_auc']:.4f})")
    print(f"{'format':<12} {'size MB':>8} {'x smaller':>9} {'ms/film':>8} {'speedup':>8} {'films/s@32':>10} "
          f"{'x thru':>7} {'AUC delta':>10} {'max|dp|':>9}")
    for name, row in rows.items():
        print(f"{name:<12} {row['bytes'] / 1e6:>8.2f} {base['bytes'] / row['bytes']:>9.2f} {row['ms']:>8.2f} "
              f"{base['ms'] / row['ms']:>8.2f} {row['fps32']:>10.1f} {row['fps32'] / base['fps32']:>7.2f} "
              f"{row['auc_delta']:>+10.4f} {row.get('max_abs_diff', 0.0):>9.2e}")
    int8, onnx = rows.get("litert-int8"), rows.get("onnx")
    nan = float("nan")
    print(f"litert_int8_speedup={base['ms'] / int8['ms'] if int8 else nan:.2f} "
          f"litert_int8_size_ratio={base['bytes'] / int8['bytes'] if int8 else nan:.2f} "
          f"litert_int8_auc_delta={int8['auc_delta'] if int8 else nan:+.4f} "
          f"onnx_speedup={base['ms'] / onnx['ms'] if onnx else nan:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
