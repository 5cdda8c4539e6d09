"""The input gate: is this a frontal chest film? Every front end asks it before the model
(``Predictor.predict`` and ``Predictor.screen``), so a photograph, a blank or inverted or
rotated film, or a crop without the lungs gets a "not processed" answer
(``cxr_tf.inference.results.NotProcessed``) naming why, instead of a triage call.

The gate is a small CNN (``build_model``: 68,000 weights, 64 px greyscale in) that ships
with the package (``cxr_tf/resources/gate.keras`` and ``gate.json``: classes, threshold,
version, what it was trained on and how it measured). It works for every run, since what it
judges (is this a frontal chest film?) does not depend on the model behind it, and it costs about a
millisecond per film. ``tools/train_gate.py`` trains it from the embedded NIH sample and the
negatives of ``cxr_tf.data.negatives``; ``python -m cxr_tf.gate --report`` measures it on held-out
material (``measure``). docs/gate.md says what it has and has not seen.

A film passes when the gate's probability of "frontal" (its *score*) reaches the threshold in
gate.json; otherwise the reason is the most probable other class. A film the gate cannot score is
that film's error, never a silent pass.
"""

import dataclasses
import functools
import json
import threading
import time
from pathlib import Path

import numpy as np

from cxr_tf.data import negatives
from cxr_tf.data.images import to_square

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MODEL_FILE, INFO_FILE = "gate.keras", "gate.json"
SIZE = 64
"""Side (px) of the gate's input: the film centre-padded to a square and shrunk (``to_square``)."""

REASONS = {
    "inverted": "its grey scale is inverted (bone dark, air bright): a MONOCHROME1/2 mix-up?",
    "rotated": "it is rotated by 90, 180 or 270 degrees",
    "lungs_not_in_view": "the lungs are not in view (a crop, or another part of the body)",
    "blank": "it is blank",
    "not_radiograph": "it is not a radiograph (a photograph, document, noise or other picture)",
    "blurred": "it is too blurred to read",
}
"""Why the gate refuses a film, per class (every class of ``negatives.CLASSES`` but "frontal")."""


def build_model(classes=negatives.CLASSES, size=SIZE):
    """The gate network: uint8 (N, size, size, 1) in, softmax over ``classes`` out."""
    import keras
    from keras import layers

    x = inputs = keras.Input((size, size, 1), name="film")
    x = layers.Rescaling(1 / 255.0, name="scale")(x)
    for i, width in enumerate((16, 32, 64, 64)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=keras.regularizers.L2(1e-4),
                          name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)  # 64 -> 32 -> 16 -> 8 -> 4
    x = layers.Flatten(name="flatten")(x)  # layout matters: rotation is where things are
    x = layers.Dropout(0.4, name="dropout")(x)
    outputs = layers.Dense(len(classes), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="cxr_tf_gate")


def prepare(pixels):
    """The gate's input of one film: uint8 (SIZE, SIZE)."""
    return to_square(np.asarray(pixels, np.uint8), SIZE)


@dataclasses.dataclass(frozen=True)
class Screening:
    """The gate's answer for one film."""

    passed: bool
    score: float
    """Probability that the film is a frontal chest film."""
    reason: str | None
    """A ``REASONS`` key when refused, else None."""
    scores: dict
    version: str

    def as_dict(self):
        return {"version": self.version, "passed": self.passed, "score": self.score,
                **({"reason": self.reason} if self.reason else {}), "scores": self.scores}

    def message(self):
        return f"the input gate refused it: {REASONS[self.reason]} (frontal score {self.score:.3f})"


OFF = {"off": True, "note": "the input gate was turned off (--no-gate): this film was not checked for "
                            "being a frontal chest film"}
"""What a result records when the gate was turned off."""


class Gate:
    """The shipped gate (or one in ``folder``: its gate.keras and gate.json)."""

    def __init__(self, folder=RESOURCES):
        import keras

        folder = Path(folder)
        self.info = json.loads((folder / INFO_FILE).read_text())
        self.classes = tuple(self.info["classes"])
        self.threshold = float(self.info["threshold"])
        self.version = str(self.info["version"])
        self.model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        self._lock = threading.Lock()  # the DICOM node screens on its association threads

    def scores(self, images):
        """(N, classes) probabilities of uint8 (N, SIZE, SIZE) gate inputs."""
        images = np.asarray(images, np.uint8)
        if not len(images):
            return np.zeros((0, len(self.classes)), np.float32)
        with self._lock:
            return np.asarray(self.model(images[..., None], training=False), np.float32)

    def screen(self, pictures):
        """[Screening] of uint8 (H, W) pictures (films' pixels), in order."""
        probs = self.scores(np.stack([prepare(p) for p in pictures]) if pictures else [])
        answers = []
        for p in probs:
            score = round(float(p[0]), 4)
            passed = score >= self.threshold
            reason = None if passed else self.classes[1 + int(np.argmax(p[1:]))]
            answers.append(Screening(passed, score, reason,
                                     {c: round(float(v), 4) for c, v in zip(self.classes, p)}, self.version))
        return answers

    def describe(self):
        """What a client needs to know about the gate (JSON-serialisable)."""
        return {"version": self.version, "threshold": self.threshold, "classes": list(self.classes),
                "trained_on": self.info.get("trained_on")}


@functools.cache
def shipped():
    """The gate that ships with the package, loaded once per process and shared by every
    Predictor (it is read-only, and ``scores`` holds a lock)."""
    return Gate()


# ---------------------------------------------------------------------- measurement

def _rate(flags):
    return float(np.mean(flags)) if len(flags) else float("nan")


def measure(gate, variants=4, seed=0, records=(), predictor=None):
    """The gate on material it was not trained on: [{"set", "kind", "n", "expect", "rate"}] where
    rate is the share accepted (expect "accept") or refused (expect "refuse"); and with
    ``predictor``, {"gate_ms", "predict_ms"} per film on the same films.

    Held out: the sample films of ``negatives.sample_films(held_out=True)`` (each film once as it
    is, and ``variants`` generated pictures per film and kind), the held-out pictures, documents
    from another seed, and the frontal films of the test split of each ``records`` folder."""
    rng = np.random.default_rng(seed)
    films = list(negatives.sample_films(held_out=True).values())
    rows = []

    def add(set_name, kind, pictures, expect):
        passed = [s.passed for s in gate.screen(pictures)]
        rows.append({"set": set_name, "kind": kind, "n": len(pictures), "expect": expect,
                     "rate": _rate(passed) if expect == "accept" else 1 - _rate(passed)})

    add("NIH sample, held out", "frontal as stored", films, "accept")
    add("NIH sample, held out", "mirrored as stored", [np.ascontiguousarray(f[:, ::-1]) for f in films], "accept")
    for kind in negatives.KINDS.values():
        if kind.name == "photograph":
            pictures = negatives.pictures(held_out=True)
            made = [negatives.view_of(p, rng) for p in pictures.values() for _ in range(variants * 4)]
            add("matplotlib + scikit-learn pictures", f"photograph ({', '.join(pictures)})", made, "refuse")
            continue
        made = [kind.make(f, rng) for f in films for _ in range(variants)]
        frontal = kind.cls == negatives.FRONTAL
        add("NIH sample, held out", f"{kind.name}, varied" if frontal else kind.name, made,
            "accept" if frontal else "refuse")
    for folder in records:
        frontal = records_films(folder)
        add(f"records {folder}", "frontal, test split", frontal, "accept")
    timing = None
    if predictor is not None:
        timing = cost(gate, predictor, films[:16])
    return rows, timing


def records_films(folder, split="test"):
    """uint8 films of the frontal (PA/AP or unrecorded view) examples of a records folder's split."""
    import cv2
    import tensorflow as tf

    from cxr_tf.data import manifest
    from cxr_tf.data.records import parse_example, parse_shard_name

    labels = len(manifest.read(folder).labels)
    films = []
    for shard in sorted(Path(folder).glob(f"{split}-*.tfrecord")):
        if parse_shard_name(shard.name)[0] != split:
            continue
        for raw in tf.data.TFRecordDataset(str(shard)):
            example = parse_example(raw, labels)
            if example["view"].numpy().decode().upper() not in ("PA", "AP", ""):
                continue
            films.append(cv2.imdecode(np.frombuffer(example["image"].numpy(), np.uint8), cv2.IMREAD_GRAYSCALE))
    return films


def cost(gate, predictor, films, repeats=3):
    """{"gate_ms", "predict_ms", "ratio"}: per-film milliseconds of the gate and of one predict
    (gate off) on the same films, each the best of ``repeats``, measured side by side."""
    from cxr_tf.inference.readers import Film

    items = [Film(f"film{i}", f, "png") for i, f in enumerate(films)]
    gate.screen(films)
    predictor.predict(items)  # warm both: traces and first calls

    def best(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * min(times) / len(films)

    gate_ms, predict_ms = best(lambda: gate.screen(films)), best(lambda: predictor.predict(items))
    return {"gate_ms": round(gate_ms, 3), "predict_ms": round(predict_ms, 2), "ratio": round(gate_ms / predict_ms, 4)}
