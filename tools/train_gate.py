"""Train the input gate (``cxr_tf.inference.gate``) and write it into the package.

    pip install scikit-image      # its bundled pictures are the gate's training non-radiographs
    python tools/train_gate.py    # about 10 minutes on 2 CPU cores

What it learns from (``cxr_tf.data.negatives``): the embedded NIH sample's films outside
``HELD_OUT`` as sites vary them (crop, rotation up to 10 degrees, mirror, gamma, contrast,
blur, noise, side markers), the same films inverted, rotated, cropped to lose the lungs, blurred
beyond reading, blank and noise pictures, rendered documents, and scikit-image's pictures. Each
epoch draws fresh pictures. Nothing held out is used for training or for choosing anything; the
held-out measurement (``gate.measure``) is written into gate.json and printed.

Writes ``OUT/gate.keras`` and ``OUT/gate.json`` (default OUT: ``cxr_tf/resources``).
"""

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_tf.data import negatives  # noqa: E402
from cxr_tf.inference import gate  # noqa: E402

MIX = {"frontal": 0.32, "mirrored": 0.18, "inverted": 0.08, "rotated 90": 0.03, "rotated 180": 0.03,
       "rotated 270": 0.03, "lungs cropped out": 0.09, "blank": 0.03, "noise": 0.04, "blurred": 0.05,
       "document": 0.04, "photograph": 0.08}
"""Share of each kind in every epoch: half frontal (as stored, or mirrored)."""


def draw(count, films, pictures, rng):
    """``count`` gate inputs uint8 (count, SIZE, SIZE) and their class indices."""
    kinds = list(MIX)
    picks = rng.choice(len(kinds), size=count, p=np.array(list(MIX.values())) / sum(MIX.values()))
    x = np.empty((count, gate.SIZE, gate.SIZE), np.uint8)
    y = np.empty(count, np.int64)
    for i, k in enumerate(picks):
        kind = negatives.KINDS[kinds[k]]
        film = films[rng.integers(len(films))]
        if kind.name == "photograph":
            picture = negatives.view_of(pictures[rng.integers(len(pictures))], rng)
        else:
            picture = kind.make(film, rng)
        x[i] = gate.prepare(picture)
        y[i] = negatives.CLASSES.index(kind.cls)
    return x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(gate.RESOURCES), help="folder for gate.keras and gate.json")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--per-epoch", type=int, default=10000, help="pictures drawn per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5, help="frontal probability a film needs to pass")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    films = list(negatives.sample_films(held_out=False).values())
    pictures = list(negatives.pictures(held_out=False).values())
    print(f"training on {len(films)} sample films and {len(pictures)} scikit-image pictures")

    model = gate.build_model()
    steps = args.epochs * -(-args.per_epoch // 128)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    for epoch in range(args.epochs):
        x, y = draw(args.per_epoch, films, pictures, rng)
        history = model.fit(x[..., None], y, batch_size=128, epochs=1, verbose=0)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {history.history['loss'][0]:.4f} "
              f"accuracy {history.history['accuracy'][0]:.4f} ({time.time() - start:.0f} s)", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shipped = gate.build_model()  # the weights alone: no optimizer state in the wheel
    shipped.set_weights(model.get_weights())
    shipped.save(out / gate.MODEL_FILE)
    digest = hashlib.sha256((out / gate.MODEL_FILE).read_bytes()).hexdigest()[:12]
    info = {
        "version": f"{date.today().isoformat()}-{digest}",
        "classes": list(negatives.CLASSES),
        "threshold": args.threshold,
        "input": f"{gate.SIZE} px greyscale, the film centre-padded to a square",
        "trained_on": {
            "films": f"{len(films)} films of the embedded NIH sample (all but the official test list and the "
                     f"first {negatives.HELD_OUT_ROWS} rows of the table)",
            "negatives": sorted(k for k in MIX if negatives.KINDS[k].cls != negatives.FRONTAL),
            "pictures": f"{len(pictures)} scikit-image data pictures",
            "laterals": "none: no lateral film is available offline, so lateral views are not learned",
            "epochs": args.epochs, "per_epoch": args.per_epoch, "seed": args.seed,
            "tool": "tools/train_gate.py",
        },
    }
    (out / gate.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    rows, _ = gate.measure(gate.Gate(out))
    info["held_out"] = rows
    (out / gate.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    for row in rows:
        print(f"{row['kind']:<40} {row['expect']:>7} {row['rate']:7.1%}  (n={row['n']})")
    print(f"wrote {out / gate.MODEL_FILE} ({(out / gate.MODEL_FILE).stat().st_size // 1024} KB), version {info['version']}")


if __name__ == "__main__":
    main()
