"""Side-by-side cost of every registered architecture: parameters, forward FLOPs
(TensorFlow profiler, per image), and train / inference throughput in images/s.

    python tools/bench_models.py --image-size 224 --steps 3 --batch-size 8
    python tools/bench_models.py --arch fusion densenet121 --mixed-precision   # on a GPU

Timings exclude the first (tracing) step. On a shared CPU box the numbers are noisy.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.models import ARCHITECTURES, META_DIM, build_model


def forward_flops(model, image_size):
    """FLOPs of one forward pass on one image (None when the profiler cannot count)."""
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        from cxr_tf.models import model_input_spec

        specs = [tf.TensorSpec((1, image_size, image_size, 1), tf.float32, name="image")]
        if model_input_spec(model)[1]:
            specs = [{"image": specs[0], "meta": tf.TensorSpec((1, META_DIM), tf.float32, name="meta")}]
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(*specs)
        graph = convert_variables_to_constants_v2(concrete).graph
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops
    except Exception:  # the profiler is best effort: report n/a rather than fail the benchmark
        return None


def batch_for(arch, image_size, batch_size, rng):
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 1)).astype("float32")
    if ARCHITECTURES[arch].multimodal:
        x = {"image": x, "meta": rng.normal(size=(batch_size, META_DIM)).astype("float32")}
    y = (rng.random((batch_size, 14)) < 0.2).astype("float32")
    return x, y


def bench(arch, image_size, batch_size, steps, flops=True):
    """dict of params, GFLOPs, train and inference images/s for one architecture."""
    rng = np.random.default_rng(0)
    model = build_model(arch, image_size=image_size)
    x, y = batch_for(arch, image_size, batch_size, rng)
    gflops = forward_flops(model, image_size) if flops else None
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
    model.train_on_batch(x, y)  # trace
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    train = steps * batch_size / (time.perf_counter() - start)
    infer_fn = tf.function(lambda inputs: model(inputs, training=False))
    infer_fn(x)  # trace
    start = time.perf_counter()
    for _ in range(steps):
        np.asarray(infer_fn(x))
    infer = steps * batch_size / (time.perf_counter() - start)
    return {"arch": arch, "params": model.count_params(), "gflops": None if gflops is None else gflops / 1e9,
            "train_ips": train, "infer_ips": infer}


def format_table(rows, image_size):
    lines = [f"image size {image_size} px",
             f"{'arch':<16}{'params':>14}{'GFLOPs/img':>12}{'train img/s':>13}{'infer img/s':>13}"]
    for r in rows:
        g = "n/a" if r["gflops"] is None else f"{r['gflops']:.2f}"
        lines.append(f"{r['arch']:<16}{r['params']:>14,}{g:>12}{r['train_ips']:>13.1f}{r['infer_ips']:>13.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one tracing step")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 policy (GPU)")
    args = parser.parse_args(argv)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    rows = []
    for arch in args.arch:
        rows.append(bench(arch, args.image_size, args.batch_size, args.steps, flops=not args.no_flops))
        print(format_table(rows[-1:], args.image_size).splitlines()[-1], flush=True)
    print(format_table(rows, args.image_size))


if __name__ == "__main__":
    main()
