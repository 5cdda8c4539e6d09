"""The imported DenseNet121 in Keras against the same network in PyTorch on CPU, on the same films,
at batch 1 and 16, in one process; and the LiteRT int8 export of the imported run beside both.

    pip install -e ".[import,export]"
    python tools/bench_import.py --run saved_models/<imported run> --checkpoint FILE [--trust-pickle]
                                 [--films DIR] [--records DIR] [--repeats 20]

``--run``: a run written by ``python -m cxr_tf.import_weights FILE``; ``--checkpoint``: that file
(its PyTorch network is the reference). Each side gets the films as its own pipeline prepares
them once (timing covers the network only): Keras ``model.predict_on_batch`` on 0..255 pixels (the
preprocessing inside the model), PyTorch ``classifier(features2(x))`` under ``torch.no_grad`` on
xrv's tensor, LiteRT the int8 backbone + NumPy head (``--backend litert``'s path; exported into
``RUN/export/litert-int8`` with its parity report when missing, calibrated on ``--records``' val
split). Threads: all of this machine's, for every framework. Prints p50 latency (ms per batch)
and films/s per framework and batch size, and the ratios to PyTorch; the last line is
``keras_vs_torch_b1=<r> keras_vs_torch_b16=<r> litert_int8_vs_torch_b1=<r>`` (films/s ratios).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def p50(fn, repeats):
    fn()  # warm-up (graph tracing, allocation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--films", type=Path, help="PNG films (default: the embedded sample)")
    parser.add_argument("--records", type=Path, help="records for the int8 export's calibration and parity "
                                                      "(default: skip LiteRT unless RUN/export/litert-int8 exists)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import torch  # before TensorFlow (cxr_tf.inference.torch_weights)


    from cxr_tf import runs
    from cxr_tf.inference.torch_weights import (film_paths, load_checkpoint, our_pixels, source_pipeline,
                                                torch_reference, unpack)
    from cxr_tf.models import imported, published

    run = runs.Run(args.run)
    network = run.config["network"]
    layout, size = network["layout"], int(network["image_size"])
    spec = published.LAYOUTS[layout]
    paths = film_paths([args.films] if args.films else None, 16)
    pixels = our_pixels(paths, size, network.get("resize", spec.resize))
    source = source_pipeline(layout, paths, size)
    obj, _ = load_checkpoint(args.checkpoint, args.trust_pickle)
    state, module, _ = unpack(obj)
    config = imported.infer_config(imported.canonical_keys(state, spec.prefixes), spec.classifier)
    reference = torch_reference(layout, config, state, module)
    model = run.model
    rows = {}
    for batch in (1, 16):
        x, s = pixels[:batch], source[:batch]
        rows[("keras", batch)] = p50(lambda: model.predict_on_batch(x), args.repeats)
        rows[("pytorch", batch)] = p50(lambda: reference(s), args.repeats)
    export = args.run / "export" / "litert-int8"
    if args.records and not export.is_dir():
        from cxr_tf.inference.export import export_run

        export_run(args.run, "litert-int8", records=args.records)
    if export.is_dir():
        from cxr_tf.inference.export import PortableModel

        portable = PortableModel(export)
        for batch in (1, 16):
            x = pixels[:batch]
            rows[("litert-int8", batch)] = p50(lambda: portable.deterministic(x), args.repeats)
    print(f"{config.name} ({layout}), {size} px, {len(paths)} films, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
    print(f"{'framework':12s} {'batch':>5s} {'p50 ms':>9s} {'films/s':>8s} {'vs torch':>8s}")
    speed = {}
    for (name, batch), seconds in rows.items():
        speed[(name, batch)] = batch / seconds
        ratio = speed[(name, batch)] / (batch / rows[("pytorch", batch)])
        print(f"{name:12s} {batch:5d} {seconds * 1000:9.1f} {speed[(name, batch)]:8.1f} {ratio:8.2f}")

    def ratio(name, batch):
        key = (name, batch)
        return f"{speed[key] / speed[('pytorch', batch)]:.2f}" if key in speed else "n/a"

    print(f"keras_vs_torch_b1={ratio('keras', 1)} keras_vs_torch_b16={ratio('keras', 16)} "
          f"litert_int8_vs_torch_b1={ratio('litert-int8', 1)} litert_int8_vs_torch_b16={ratio('litert-int8', 16)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
