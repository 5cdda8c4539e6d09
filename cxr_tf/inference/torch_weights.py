"""Reading published PyTorch checkpoints and measuring the imported network against PyTorch: the
torch half of ``python -m cxr_tf.import_weights`` (needs ``pip install 'cxr_tf[import]'``:
torch, torchvision, torchxrayvision; a missing one is one ``MissingExtra`` line).

``import_checkpoint(path, ...)``: read the file (``torch.load(weights_only=True)`` where the
format allows; a file that needs full unpickling, which runs code, only with ``trust_pickle``),
find its layout and weight set (``cxr_tf.models.published``), rebuild the network in Keras
(``cxr_tf.training.importer.build_model``), **measure parity** on real films
(``measure_parity``: the network on the same tensor, the preprocessing, end to end) and write the
run (``cxr_tf.training.importer.write_run``). Nothing is written when the network's logits differ
from PyTorch's by more than ``LOGIT_TOLERANCE`` (relative).
"""

import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from cxr_tf import runs
from cxr_tf.data.datasets.base import file_sha256 as sha256
from cxr_tf.data.film_resize import DEFAULT_METHOD
from cxr_tf.inference.extras import require
from cxr_tf.models import imported, published
from cxr_tf.training.importer import (DEFAULT_FILMS, DEFAULT_SIZES, LOGIT_TOLERANCE, PROB_TOLERANCE, SOURCES,
                                      ImportProblem, build_model, network_description, resolve_labels,
                                      resolve_thresholds, write_run)


# --------------------------------------------------------------------------- reading the file


def _torch():
    """(torch, torchxrayvision), or MissingExtra naming the ``import`` extra."""
    if "triton" not in sys.modules and "tensorflow" in sys.modules:
        # triton (GPU kernels for torch.compile; never used to read weights on a CPU) crashes the
        # process when its LLVM loads after TensorFlow's (segfault, torch 2.14.1 CUDA wheel + TF 2.21):
        # torch then runs without it.
        sys.modules.setdefault("triton", None)
    torch = require("torch", "import", "Importing PyTorch weights")
    with warnings.catch_warnings():  # torchxrayvision sets a global "ignore" filter on import
        xrv = require("torchxrayvision", "import", "Importing PyTorch weights")
    return torch, xrv


def load_checkpoint(path, trust_pickle=False):
    """(object, how) of a torch file: ``torch.load(weights_only=True)`` first (plain tensors and
    containers: no code runs); a file that needs full unpickling (a whole pickled module, as
    torchxrayvision publishes its DenseNets and jrzech/reproduce-chexnet its checkpoint) only
    with ``trust_pickle``, else ImportProblem saying why."""
    torch, _ = _torch()
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "torch.load(weights_only=True)"
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        if not trust_pickle:
            reason = f"{type(err).__name__}: {_unsafe_global(err) or 'not plain tensors'}"
            raise ImportProblem(
                f"{path}: this file is a pickled Python object (for example a whole torch module, as torchxrayvision "
                f"publishes its DenseNet weights), not plain tensors: loading it runs code stored in the file, "
                f"which torch.load(weights_only=True) refuses ({reason}). If you trust where the file came from "
                f"(compare its SHA-256 {sha256(path)} with the publisher's), pass --trust-pickle") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=False)
    return obj, "torch.load(weights_only=False) (--trust-pickle: the file was unpickled, which runs code)"


def _unsafe_global(err):
    """The Python object torch's safe loader refused (e.g. ``torchxrayvision.models.DenseNet``), if it says."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return f"it refers to {found.group(1)}" if found else None


def unpack(obj):
    """(state dict {key: np.ndarray}, torch module or None, {"labels", "op_threshs", "input_size"}
    the object carries). Accepts a module, a dict holding ``state_dict`` or ``model``, or a state dict."""
    torch, _ = _torch()
    module = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        module = obj["model"]
    elif isinstance(obj, torch.nn.Module):
        module = obj
    if module is not None:
        for mod in module.modules():  # xrv's patch for modules pickled by old torch versions
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        state, attrs = module.state_dict(), _module_attrs(module)
    else:
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        attrs = {}
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise ImportProblem("the file holds neither a torch module nor a state dict ({name: tensor}) nor a dict "
                           f"with one under 'state_dict' or 'model' (it holds a {type(obj).__name__})")
    arrays = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state.items()}
    return arrays, module, attrs


def _module_attrs(module):
    attrs = {}
    labels = getattr(module, "pathologies", None) or getattr(module, "targets", None)
    if labels is not None:
        attrs["labels"] = [str(x) for x in labels]
    thresholds = getattr(module, "op_threshs", None)
    if thresholds is not None:
        attrs["op_threshs"] = [float(x) for x in np.asarray(thresholds.detach().cpu() if hasattr(thresholds, "detach")
                                                            else thresholds, dtype=np.float64).ravel()]
    if getattr(module, "input_resolution", None):
        attrs["input_size"] = int(module.input_resolution)
    return attrs


def guess_layout(state, module=None):
    """The ``published.LAYOUTS`` name of a state dict (its key names, first channel count and
    module class); ImportProblem when it cannot tell."""
    keys = set(state)
    cls = type(module).__module__ + "." + type(module).__name__ if module is not None else ""
    if "torchxrayvision" in cls:
        return "xrv-resnet" if "ResNet" in cls else "xrv-densenet"
    if any(k.startswith(("module.densenet121.", "densenet121.")) for k in keys):
        return "chexnet-arnoweng"
    if any(k.endswith("classifier.0.weight") for k in keys):
        return "chexnet-jrzech"
    conv0 = state.get("features.conv0.weight")
    if conv0 is not None:
        if conv0.shape[1] == 1:
            return "xrv-densenet"
        raise ImportProblem("a 3-channel DenseNet with a plain Linear classifier: name its layout with --layout "
                           f"({', '.join(published.LAYOUTS)})")
    if "conv1.weight" in keys or "model.conv1.weight" in keys:
        return "xrv-resnet"
    imported.infer_config(imported.canonical_keys(state))  # raises CheckpointMismatch with the key lists
    raise ImportProblem(f"cannot tell the layout of the checkpoint: pass --layout ({', '.join(published.LAYOUTS)})")


# --------------------------------------------------------------------------- torch side: parity
def torch_reference(layout, config, state, module=None):
    """A function (N, C, S, S) float32 source tensor -> (N, K) logits with the source's own
    PyTorch code: the loaded module when there is one, else the module the source builds
    (xrv.models.DenseNet, torchvision's ResNet with xrv's 1-channel stem, torchvision's
    DenseNet with a Linear+Sigmoid classifier), loaded with ``state``."""
    torch, xrv = _torch()
    import torchvision

    spec = published.LAYOUTS[layout]
    if module is None:
        if layout == "xrv-densenet":
            module = xrv.models.DenseNet(weights=None, growth_rate=config.growth_rate, block_config=config.blocks,
                                         num_init_features=config.init_features, bn_size=config.bn_size,
                                         num_classes=config.num_classes)
        elif layout == "xrv-resnet":
            module = torch_resnet(config)
        else:
            module = torchvision.models.DenseNet(growth_rate=config.growth_rate, block_config=config.blocks,
                                                 num_init_features=config.init_features, bn_size=config.bn_size,
                                                 num_classes=config.num_classes)
            module.classifier = torch.nn.Sequential(torch.nn.Linear(module.classifier.in_features, config.num_classes),
                                                    torch.nn.Sigmoid())
        canonical = imported.canonical_keys(state, spec.prefixes)
        module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in canonical.items()},
                               strict=False)
    module.eval()
    inner = getattr(module, "module", module)  # DataParallel
    inner = getattr(inner, "densenet121", inner)  # arnoweng's wrapper

    def logits(x):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if layout == "xrv-densenet":
                return inner.classifier(inner.features2(x)).numpy()
            if layout == "xrv-resnet":
                net = getattr(inner, "model", inner)
                return net(x).numpy()
            features = torch.nn.functional.relu(inner.features(x))
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, (1, 1)), 1)
            linear = inner.classifier[0] if isinstance(inner.classifier, torch.nn.Sequential) else inner.classifier
            return linear(pooled).numpy()

    return logits


def torch_resnet(config):
    """torchvision's ResNet with xrv's 1-channel stem, at ``config``'s widths (ResNet50 at the
    published sizes; a reduced one keeps torchvision's Bottleneck blocks and forward)."""
    torch, _ = _torch()
    from torchvision.models import resnet

    net = resnet.resnet50(weights=None, num_classes=config.num_classes)
    net.conv1 = torch.nn.Conv2d(config.in_channels, config.width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = torch.nn.BatchNorm2d(config.width)
    inplanes = config.width
    for s, count in enumerate(config.layers):
        planes = config.width * 2 ** s
        stride = 1 if s == 0 else 2
        blocks = []
        for j in range(count):
            downsample = None
            if j == 0:
                downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                                 torch.nn.BatchNorm2d(planes * 4))
            blocks.append(resnet.Bottleneck(inplanes, planes, stride if j == 0 else 1, downsample))
            inplanes = planes * 4
        setattr(net, f"layer{s + 1}", torch.nn.Sequential(*blocks))
    net.fc = torch.nn.Linear(inplanes, config.num_classes)
    return net


def source_pipeline(layout, paths, image_size):
    """(N, C, S, S) float32: the films as the source's own code prepares them (xrv: load_image,
    XRayCenterCrop, XRayResizer; CheXNet: PIL RGB, Resize, CenterCrop, ToTensor, Normalize)."""
    _, xrv = _torch()
    if layout.startswith("xrv"):
        crop, resize = xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(image_size)
        return np.stack([resize(crop(xrv.utils.load_image(str(p)))) for p in paths]).astype(np.float32)
    from PIL import Image
    from torchvision import transforms

    steps = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
                                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return np.stack([steps(Image.open(p).convert("RGB")).numpy() for p in paths]).astype(np.float32)


def our_pixels(paths, image_size, method):
    """(N, S, S, 1) float32 0..255: the films as cxr_tf reads them (``read_image``) and prepares
    them with ``cxr_tf.data.film_resize.prepare(method)``."""
    from cxr_tf.data.film_resize import prepare
    from cxr_tf.data.images import read_image

    return np.stack([prepare(read_image(p), image_size, method) for p in paths]).astype(np.float32)[..., None]


def to_source_space(pixels, preprocessing):
    """(N, S, S, 1) raw 0..255 -> (N, C, S, S) the values the model's preprocess layer computes."""
    x = pixels[..., 0].astype(np.float64)
    if preprocessing == "xrv":
        return (x / 255.0 * 2048.0 - 1024.0)[:, None].astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((x[:, None] / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def measure_parity(state, layout, config, slots, model, paths, image_size, module=None):
    """The parity block of import.json: the network (same source tensor into Keras and PyTorch:
    relative logit difference), the preprocessing (our film -> tensor path against the
    source's), and end to end (raw film through our path + Keras against the source's
    pipeline + PyTorch: |Δ probability|), on ``paths``."""
    spec = published.LAYOUTS[layout]
    keep = [i for i, n in enumerate(slots) if n]
    reference = torch_reference(layout, config, state, module)
    source = source_pipeline(layout, paths, image_size)  # (N, C, S, S)
    torch_logits = np.concatenate([reference(source[i:i + 8]) for i in range(0, len(source), 8)])
    net, _ = imported.convert(state, image_size, spec.preprocessing, spec.prefixes, spec.classifier,
                              source_space=True)
    keras_logits = net.predict(np.transpose(source, (0, 2, 3, 1)), batch_size=8, verbose=0)
    logit_abs = float(np.abs(keras_logits - torch_logits).max())
    logit_rel = logit_abs / max(float(np.abs(torch_logits).max()), 1e-12)
    p_source = _sigmoid(torch_logits[:, keep])
    p_net = _sigmoid(keras_logits[:, keep])
    units = "xrv units ([-1024, 1024])" if spec.preprocessing == "xrv" else "ImageNet-normalised units"

    def path(method):
        pixels = our_pixels(paths, image_size, method)
        diff = np.abs(to_source_space(pixels, spec.preprocessing).astype(np.float64) - source)
        dp = np.abs(model.predict(pixels, batch_size=8, verbose=0).astype(np.float64) - p_source)
        return {"resize": method, "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
                "p99_abs_diff": float(np.percentile(diff, 99)), "max_abs_prob_diff": float(dp.max()),
                "mean_abs_prob_diff": float(dp.mean()), "passed": bool(dp.max() <= PROB_TOLERANCE)}

    matched, default = path(spec.resize), path(DEFAULT_METHOD)
    return {
        "films": [Path(p).name for p in paths],
        "network": {"input": "the source pipeline's tensor of each film, fed to both", "max_abs_logit_diff": logit_abs,
                    "max_rel_logit_diff": logit_rel, "logit_range": [float(torch_logits.min()), float(torch_logits.max())],
                    "tolerance": LOGIT_TOLERANCE, "passed": bool(logit_rel <= LOGIT_TOLERANCE),
                    "max_abs_prob_diff": float(np.abs(p_net - p_source).max())},
        "end_to_end": {"source": spec.pipeline, "units": units, "tolerance": PROB_TOLERANCE,
                       "source_prob_std_median": float(np.median(p_source.std(axis=0))),
                       "run_input": matched, "pad_area": default, "passed": matched["passed"],
                       "note": "raw film -> cxr_tf's reader -> film_resize.prepare(resize) -> the Keras model, against "
                               "raw film -> the source's pipeline -> PyTorch; probabilities = sigmoid(logits) (xrv's "
                               "op_norm is not applied: thresholds.json holds op_threshs, and p > t decides as "
                               "op_norm(p) > 0.5). run_input: the resize this run names (config.json input.resize); "
                               "pad_area: cxr_tf's own models' resize, for the cost of not matching the source"},
    }


def default_films(count=DEFAULT_FILMS):
    from cxr_tf.data.datasets.nih import SAMPLE_DIR

    return sorted((SAMPLE_DIR / "images").glob("*.png"))[:count]


def film_paths(films, count):
    """The films parity is measured on: PNG/JPEG files in ``films`` (files or folders), the first
    ``count``; the embedded sample's when None."""
    if not films:
        return default_films(count)
    paths = []
    for item in films:
        item = Path(item)
        paths += sorted(p for p in item.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if item.is_dir() else [item]
    if not paths:
        raise ImportProblem(f"no PNG or JPEG films in {', '.join(map(str, films))}")
    return paths[:count]


def import_checkpoint(path, out=runs.DEFAULT_RUNS_DIR, weights_set=None, layout=None, trust_pickle=False,
                      image_size=None, films=None, num_films=DEFAULT_FILMS, run_name=None, log=print):
    """Import one checkpoint file into a new run folder (module docstring); returns its path.
    ImportProblem / CheckpointMismatch / MissingExtra name the file, the reason and the fix;
    nothing is written unless the network's parity is within ``LOGIT_TOLERANCE``."""
    started = time.time()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    digest = sha256(path)
    obj, how = load_checkpoint(path, trust_pickle)
    state, module, attrs = unpack(obj)
    chosen = published.get(weights_set) if weights_set else published.for_file(path.name)
    if layout is not None and layout not in published.LAYOUTS:
        raise ImportProblem(f"--layout {layout!r}: expected one of {', '.join(published.LAYOUTS)}")
    layout = (chosen.layout if chosen else None) or layout or guess_layout(state, module)
    spec = published.LAYOUTS[layout]
    config = imported.infer_config(imported.canonical_keys(state, spec.prefixes), spec.classifier)
    imported.check_state(imported.canonical_keys(state, spec.prefixes), config)
    slots, label_origin = resolve_labels(chosen, layout, attrs, config.num_classes)
    thresholds, threshold_origin, caveats = resolve_thresholds(chosen, attrs, slots)
    size = int(image_size or (chosen.input_size if chosen else attrs.get("input_size") or DEFAULT_SIZES[layout]))
    model, config = build_model(state, layout, slots, size)
    log(f"import: {path.name}: {config.name}, layout {layout}, {len(thresholds)} trained findings of "
        f"{len(slots)} outputs, {size} px; measuring parity")
    paths = film_paths(films, num_films)
    parity = measure_parity(state, layout, config, slots, model, paths, size, module)
    net = parity["network"]
    if not net["passed"]:
        raise ImportProblem(f"{path}: the Keras network differs from PyTorch by {net['max_rel_logit_diff']:.2e} "
                           f"(relative logits), above {LOGIT_TOLERANCE:g}: not written (a converter bug; please report it)")
    e2e = parity["end_to_end"]["run_input"]
    if not e2e["passed"]:
        caveats.append(f"end to end (raw film -> probability) this import differs from the source's pipeline by up to "
                       f"{e2e['max_abs_prob_diff']:.4f} on {len(paths)} films (import.json: parity)")
    if layout == "chexnet-arnoweng":
        caveats.append("arnoweng/CheXNet averages ten 224 px crops of a 256 px film; this run reads the whole film "
                       "at 224 px, as jrzech/reproduce-chexnet does")
    torch, xrv = _torch()
    source = SOURCES[layout]
    provenance = {"source": source, "weights_set": chosen.name if chosen else None, "file": path.name,
                  "sha256": digest, "loaded_with": how, "labels_from": label_origin,
                  "licence": chosen.licence if chosen else f"as published by {source} (check its licence)",
                  "trained_on": chosen.trained_on if chosen else "data the file does not name",
                  "split": chosen.split if chosen else "split unknown",
                  "datasets": list(chosen.datasets) if chosen else [], "citation": chosen.citation if chosen else "",
                  "get": chosen.get if chosen else "", "dropped_untrained_slots": [i for i, n in enumerate(slots) if not n],
                  "versions": {"torch": torch.__version__, "torchxrayvision": getattr(xrv, "__version__", "?")}}
    network = network_description(config, layout, size)
    run_dir = write_run(model, out, slots=slots, thresholds=thresholds, threshold_origin=threshold_origin,
                        provenance=provenance, network=network, parity=parity, caveats=caveats, run_name=run_name)
    area = parity["end_to_end"]["pad_area"]
    log(f"import: network: max relative logit difference {net['max_rel_logit_diff']:.2e}")
    log(f"import: end to end on {len(paths)} films, resize {e2e['resize']}: input mean |Δ| {e2e['mean_abs_diff']:.3g}, "
        f"max {e2e['max_abs_diff']:.3g} {parity['end_to_end']['units']}, max |Δp| {e2e['max_abs_prob_diff']:.2e}; "
        f"with pad-area: mean |Δ| {area['mean_abs_diff']:.3g}, max {area['max_abs_diff']:.3g}, max |Δp| "
        f"{area['max_abs_prob_diff']:.2e}")
    log(f"import: wrote {run_dir} in {time.time() - started:.0f}s (saved_models/latest points at it)")
    return run_dir
