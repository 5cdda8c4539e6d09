"""The run folder of imported weights, without torch: state dict (NumPy) + the source's labels
and thresholds -> an ordinary run (``build_model``, ``write_run``). The torch side (reading the
file, parity against PyTorch) is ``cxr_tf.inference.torch_weights``; the command is
``python -m cxr_tf.import_weights``.

The run folder (layout owned by ``cxr_tf.runs``) is what ``fit`` writes, less the training
history: ``model.keras`` (raw 0..255 in, the source's preprocessing inside, one sigmoid per
trained finding), ``savedmodel/``, ``config.json`` (``imported``: provenance; ``network``;
``split_method`` "imported"), ``labels.json`` (trained slots only, in our vocabulary),
``thresholds.json`` (the source's ``op_threshs``, else 0.5 with a caveat), ``metrics.json`` (no
val/test block: nothing is known on the user's data; ``training.imported`` carries the provenance
that ``cxr_tf.inference.evidence`` reads), ``import.json`` (provenance + measured parity) and
``state.json``.
"""

import json
import math
from datetime import datetime
from pathlib import Path

from cxr_tf import runs
from cxr_tf.data import harmonise
from cxr_tf.data.jsonfile import write_json
from cxr_tf.models import imported, published

IMPORT_FILE = "import.json"
IMPORT_VERSION = 1
LOGIT_TOLERANCE = 1e-4
"""Largest relative logit difference (max |Δ| / max |logit|) accepted between Keras and PyTorch."""
PROB_TOLERANCE = 2e-3
"""Largest |Δ probability| end to end (raw film -> our path vs the source's pipeline + PyTorch)."""
DEFAULT_FILMS = 16
"""Films of the embedded sample that parity is measured on when no --films are given."""
DEFAULT_THRESHOLD = 0.5
NOT_VALIDATED = ("not validated on your data: these weights were trained and their thresholds chosen on the "
                 "source's data; run `python -m cxr_tf.evaluate --model RUN --records YOUR_RECORDS --split val` "
                 "before relying on them")
SOURCES = {"xrv-densenet": "torchxrayvision", "xrv-resnet": "torchxrayvision",
           "chexnet-arnoweng": "arnoweng/CheXNet", "chexnet-jrzech": "jrzech/reproduce-chexnet"}
DEFAULT_SIZES = {"xrv-densenet": 224, "xrv-resnet": 512, "chexnet-arnoweng": 224, "chexnet-jrzech": 224}


class ImportProblem(ValueError):
    """A checkpoint that cannot become a run; the message names the file, the reason and the fix."""


# --------------------------------------------------------------------------- labels and thresholds
def resolve_labels(weight_set, layout, attrs, num_outputs):
    """(slot names, in output order, '' for untrained; where they came from)."""
    if weight_set is not None:
        labels, origin = list(weight_set.labels), f"weight set {weight_set.name} (cxr_tf.models.published)"
    elif attrs.get("labels"):
        labels, origin = attrs["labels"], "the module's own pathologies/targets"
    elif layout.startswith("chexnet") and num_outputs == len(published.NIH_ORDER):
        labels, origin = list(published.NIH_ORDER), "the CheXNet reproductions' 14 NIH findings"
    else:
        raise ImportProblem(f"the checkpoint has {num_outputs} outputs but names none of them (a plain state dict): "
                           f"name its weight set with --weights-set ({', '.join(published.WEIGHT_SETS)})")
    if len(labels) != num_outputs:
        raise ImportProblem(f"{origin} names {len(labels)} outputs but the classifier has {num_outputs}: "
                           "is it the right --weights-set?")
    vocabulary = set(harmonise.vocabulary())
    unknown = [n for n in labels if n and n not in vocabulary]
    if unknown:
        raise ImportProblem(f"{origin}: {unknown} are not in cxr_tf/resources/findings.csv (our vocabulary); add them "
                           "as rows at the end of that table")
    return labels, origin


def resolve_thresholds(weight_set, attrs, slots):
    """({finding: threshold} for the trained slots, {finding: where it came from}, caveats)."""
    raw = (list(weight_set.op_threshs) if weight_set is not None and weight_set.op_threshs is not None
           else attrs.get("op_threshs"))
    origin = "op_threshs of the source, chosen on its own held-out data"
    thresholds, caveats = {}, []
    if raw is not None and len(raw) != len(slots):
        raw = None
        caveats.append("the source's op_threshs do not have one value per output: not used")
    for i, name in enumerate(slots):
        if not name:
            continue
        value = None if raw is None else raw[i]
        thresholds[name] = float(value) if value is not None and math.isfinite(value) else DEFAULT_THRESHOLD
    missing = [n for n in thresholds if raw is None or not math.isfinite(raw[slots.index(n)])]
    if missing:
        caveats.append(f"no operating threshold from the source for {', '.join(missing)}: {DEFAULT_THRESHOLD} is used, "
                       "which is not a validated operating point; choose thresholds with `python -m cxr_tf.evaluate "
                       "--rechoose-thresholds` on your validation split")
    return thresholds, ({n: origin for n in thresholds if n not in missing}
                        | {n: f"{DEFAULT_THRESHOLD} (the source gives none)" for n in missing}), caveats


# --------------------------------------------------------------------------- torch-free: model and run
def build_model(state, layout, slots, image_size):
    """(keras model, config): the network of ``state`` (a raw state dict, any prefixes) with the
    source's preprocessing inside and one sigmoid per trained slot (``slots``: names in output
    order, '' = untrained, dropped)."""
    spec = published.LAYOUTS[layout]
    canonical = imported.canonical_keys(state, spec.prefixes)
    config = imported.infer_config(canonical, spec.classifier)
    imported.check_state(canonical, config)
    if config.num_classes != len(slots):
        raise ImportProblem(f"the classifier has {config.num_classes} outputs but {len(slots)} labels were given")
    keep = [i for i, name in enumerate(slots) if name]
    head = config.classifier
    canonical = {**canonical, f"{head}.weight": canonical[f"{head}.weight"][keep], f"{head}.bias": canonical[f"{head}.bias"][keep]}
    kept = type(config)(**{**config.__dict__, "num_classes": len(keep)})
    model = imported.build_network(kept, image_size, spec.preprocessing, name=f"imported_{config.family}")
    return imported.assign_weights(model, canonical, kept), config


def network_description(config, layout, image_size):
    spec = published.LAYOUTS[layout]
    return {"family": config.family, "name": config.name, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                     for k, v in config.__dict__.items()},
            "layout": layout, "preprocessing": spec.preprocessing,
            "preprocessing_in_model": imported.PREPROCESSING[spec.preprocessing][1],
            "source_pipeline": spec.pipeline, "image_size": int(image_size), "resize": spec.resize}


def write_run(model, out, *, slots, thresholds, threshold_origin, provenance, network, parity=None, caveats=(),
              run_name=None):
    """Write the run folder of an imported model (module docstring); returns its path."""
    import keras
    import tensorflow as tf

    from cxr_tf.models.savedmodel import export_savedmodel

    labels = [n for n in slots if n]
    out = Path(out).expanduser().resolve()
    stamp = datetime.now()
    slug = provenance.get("weights_set") or network["layout"]
    run_dir = out / (run_name or f"imported-{slug}-{stamp:%Y%m%d-%H%M%S}")
    if run_dir.exists():
        raise ImportProblem(f"{run_dir} exists: choose another --run-name or remove it")
    run_dir.mkdir(parents=True)
    arch = imported.GRADCAM[network["family"]]
    caveats = [*caveats, NOT_VALIDATED]
    provenance = {**provenance, "validated_on_your_data": False, "caveats": caveats}
    config = {"arch": arch, "image_size": network["image_size"], "labels": labels, "split_method": "imported",
              "records": None, "weights": "imported", "dropout": 0.0, "head_units": 0, "imported": provenance,
              "network": network, "input": {"resize": network["resize"]}, "run_dir": str(run_dir),
              "thresholds": threshold_origin,
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    runs.write_config(run_dir, config)
    runs.write_labels(run_dir, labels)
    runs.write_thresholds(thresholds, run_dir / runs.THRESHOLDS)
    model.save(run_dir / runs.MODEL)
    training = {"imported": {k: provenance.get(k) for k in ("source", "weights_set", "file", "sha256", "licence",
                                                          "trained_on", "split", "datasets")},
                "model": str(run_dir / runs.MODEL)}
    runs.write_metrics(run_dir / runs.METRICS, labels, {"val": None, "test": None}, training=training,
                       note="imported weights: no metrics on your data yet; " + NOT_VALIDATED)
    write_json(run_dir / IMPORT_FILE, {"format_version": IMPORT_VERSION, "provenance": provenance,
                                       "network": network, "labels": labels, "dropped_slots": slots.count(""),
                                       "thresholds": {"values": thresholds, "origin": threshold_origin},
                                       "parity": parity, "created": f"{stamp:%Y-%m-%dT%H:%M:%S}"})
    export_savedmodel(model, run_dir / runs.SAVEDMODEL)
    runs.write_state(run_dir, {"status": "complete", "phases_done": [], "seconds": 0.0, "imported": True})
    runs.mark_latest(run_dir)
    return run_dir


def read_import(run_dir):
    """import.json of a run, or None for a run that was not imported."""
    path = Path(run_dir) / IMPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


