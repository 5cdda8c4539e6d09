"""Cost of Monte-Carlo dropout: head-only sampling vs one prediction vs T full passes.

    python tools/bench_mc.py [--arch fusion] [--image-size 224] [--batch-size 8] [--samples 25]

Builds ``--arch`` (weights=None: timing does not depend on the weights), then
times on one batch of random films, each the median of ``--repeats`` runs after a
warm-up (graph tracing excluded):

- single: one deterministic prediction (the compiled model, dropout off);
- mc: ``cxr_tf.inference.uncertainty`` MC dropout with T samples, backbone once, head T times;
- naive: the usual approach, T full forward passes with dropout on.

Last line: ``mc25_vs_single=<ratio> naive_vs_single=<ratio>`` (with T=25).
"""

import argparse
import statistics
import sys
import time

import numpy as np
import tensorflow as tf


def median_seconds(fn, repeats):
    fn()  # warm-up: tracing and first-call allocation are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(arch="fusion", image_size=224, batch_size=8, samples=25, repeats=5, seed=0):
    """Seconds per batch {"single", "mc", "naive"} for ``arch`` at ``image_size``."""
    from cxr_tf.models import ARCHITECTURES, build_model
    from cxr_tf.inference.uncertainty import MCSampler, batch_inputs

    model = build_model(arch, image_size=image_size, weights=None, dropout=0.5, mc_dropout=False)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 1)).astype(np.float32)
    meta = rng.normal(size=(batch_size, 5)).astype(np.float32) if ARCHITECTURES[arch].multimodal else None
    x = batch_inputs(model, images, meta)
    sampler = MCSampler(model, batch_size=batch_size, seed=seed)

    single_fn = tf.function(lambda v: model(v, training=False))
    # the usual MC dropout: the whole network, T times, with dropout on but BN in
    # inference mode (always-on dropout layers; model(x, training=True) would also
    # corrupt BatchNormalization)
    always_on = tf.function(lambda v: sampler.head(sampler.backbone(v, training=False), training=False))

    def naive():
        probs = [always_on(x) for _ in range(samples)]
        return np.mean(probs, axis=0), np.std(probs, axis=0)

    return {
        "single": median_seconds(lambda: single_fn(x).numpy(), repeats),
        "mc": median_seconds(lambda: sampler(images, samples=samples, meta=meta), repeats),
        "naive": median_seconds(naive, repeats),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="fusion")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    t = bench(args.arch, args.image_size, args.batch_size, args.samples, args.repeats)
    films = args.batch_size
    print(f"{args.arch} {args.image_size} px, batch {films}, T={args.samples}, median of {args.repeats}:")
    for key, label in (("single", "single deterministic"), ("mc", f"MC head-only T={args.samples}"),
                       ("naive", f"naive T={args.samples} full passes")):
        print(f"  {label:<28} {t[key] * 1000:9.1f} ms/batch  {films / t[key]:8.1f} films/s  "
              f"{t[key] / t['single']:6.2f}x single")
    print(f"mc{args.samples}_vs_single={t['mc'] / t['single']:.2f} naive_vs_single={t['naive'] / t['single']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
