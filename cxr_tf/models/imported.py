"""Networks trained in PyTorch, rebuilt in Keras: a state dict (NumPy arrays, no torch) in, a
cxr_tf model out (``cxr_tf.training.importer`` reads the checkpoint file and writes the run).

Two families, the ones published chest X-ray weights use:

- **DenseNet-BC** as torchvision and torchxrayvision lay it out (``features.conv0``,
  ``features.norm0``, ``features.denseblockB.denselayerL.norm1/conv1/norm2/conv2``,
  ``features.transitionB.norm/conv``, ``features.norm5``, ``classifier``): DenseNet121 of xrv
  and of the CheXNet reproductions; any block configuration, growth rate and width (read off
  the tensors' shapes, so a reduced network goes through the same code as DenseNet121).
- **ResNet with bottleneck blocks** as torchvision lays it out (``conv1``, ``bn1``,
  ``layerS.B.conv1..3/bn1..3/downsample``, ``fc``; stride on the 3×3 convolution, "v1.5"):
  xrv's ResNet50 at 512 px.

The Keras layers carry the names of ``keras.applications``' DenseNet121 and ResNet50
(``conv2_block1_1_conv``, ``pool4_conv``, ``relu``, ``conv5_block3_out``, ...), so Grad-CAM and
``set_backbone_trainable`` find them as they find ours. Conventions that differ between the two
frameworks and are matched here: BatchNorm epsilon 1e-5 (Keras' DenseNet uses 1.001e-5);
PyTorch's symmetric padding of strided convolutions (explicit ``ZeroPadding2D``: "same" would pad
bottom/right only); max pooling padded with zeros, which equals PyTorch's -inf padding because it
follows a ReLU; convolution kernels (O, I, kh, kw) -> (kh, kw, I, O), dense (O, I) -> (I, O).

The model keeps cxr_tf's contract: input ``image`` (S, S, 1) raw pixels 0..255, the source's
preprocessing inside the model (``PREPROCESSING``), ``features`` (the pooled vector), a head
``head_dropout_1`` (rate 0 unless asked: the sources have no dropout) -> ``predictions`` (one
sigmoid per output). ``source_space=True`` builds the same network on the source's own input
tensor instead (N, S, S, C) for measuring parity with PyTorch.
"""

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from cxr_tf.models.heads import classification_head
from cxr_tf.models.layers import preprocess

BN_EPSILON = 1e-5
"""PyTorch's BatchNorm2d default, which every source uses."""

PREPROCESSING = {
    # name: (channels the network takes, what the model does to raw 0..255 pixels)
    "xrv": (1, "torchxrayvision: x / 255 * 2048 - 1024 (xrv.datasets.normalize(img, 255)), one grey channel"),
    "imagenet": (3, "ImageNet: grey copied to RGB, (x / 255 - mean) / std per channel (torchvision "
                    "transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))"),
}
IGNORED_SUFFIXES = ("num_batches_tracked",)
IGNORED_KEYS = ("op_threshs",)
"""Tensors of a state dict that hold no weights: BatchNorm's step counter, xrv's thresholds buffer."""
MAX_LISTED = 8
"""Tensors an error lists of each kind (expected, missing, misfit, unexpected)."""


class CheckpointMismatch(ValueError):
    """A state dict that is not the network it claims (or seems) to be: the message lists the
    tensors expected and the first ones that did not fit. Nothing is half loaded."""


# --------------------------------------------------------------------------- key names
_OLD_DENSENET = re.compile(r"\.(norm|relu|conv)\.([12])\.")


def canonical_keys(state, prefixes=()):
    """``state`` with each key's first matching ``prefixes`` entry removed and the old
    torchvision DenseNet names (before 0.3: ``norm.1``, ``conv.2``) renamed to today's
    (``norm1``, ``conv2``); the tensors that hold no weights (``IGNORED_*``) are dropped.
    ValueError when two keys become one."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        key = _OLD_DENSENET.sub(lambda m: f".{m.group(1)}{m.group(2)}.", key)
        if key.endswith(IGNORED_SUFFIXES) or key in IGNORED_KEYS:
            continue
        if key in out:
            raise CheckpointMismatch(f"two tensors of the checkpoint are both {key!r} once renamed")
        out[key] = np.asarray(value)
    return out


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class DenseNetConfig:
    """A DenseNet-BC: ``blocks`` layers per dense block, ``growth_rate``, ``init_features``
    (the first convolution's width), ``bn_size`` (bottleneck width = bn_size x growth_rate),
    ``in_channels``, ``num_classes``. DenseNet121: (6, 12, 24, 16), 32, 64, 4."""

    blocks: tuple
    growth_rate: int
    init_features: int
    bn_size: int
    in_channels: int
    num_classes: int
    classifier: str = "classifier"

    family = "densenet"

    @property
    def name(self):
        if (self.blocks, self.growth_rate, self.init_features, self.bn_size) == ((6, 12, 24, 16), 32, 64, 4):
            return "DenseNet121"
        return f"DenseNet{list(self.blocks)}-k{self.growth_rate}"

    def expected(self):
        """{torch key: shape} of every weight tensor this network holds, in order."""
        shapes, width = {}, self.init_features
        shapes["features.conv0.weight"] = (width, self.in_channels, 7, 7)
        shapes.update(_bn_shapes("features.norm0", width))
        inner = self.bn_size * self.growth_rate
        for b, count in enumerate(self.blocks, start=1):
            for i in range(1, count + 1):
                stem = f"features.denseblock{b}.denselayer{i}"
                shapes.update(_bn_shapes(f"{stem}.norm1", width))
                shapes[f"{stem}.conv1.weight"] = (inner, width, 1, 1)
                shapes.update(_bn_shapes(f"{stem}.norm2", inner))
                shapes[f"{stem}.conv2.weight"] = (self.growth_rate, inner, 3, 3)
                width += self.growth_rate
            if b < len(self.blocks):
                shapes.update(_bn_shapes(f"features.transition{b}.norm", width))
                shapes[f"features.transition{b}.conv.weight"] = (width // 2, width, 1, 1)
                width //= 2
        shapes.update(_bn_shapes("features.norm5", width))
        shapes[f"{self.classifier}.weight"] = (self.num_classes, width)
        shapes[f"{self.classifier}.bias"] = (self.num_classes,)
        return shapes


@dataclass(frozen=True)
class ResNetConfig:
    """A bottleneck ResNet (torchvision layout): ``layers`` blocks per stage, ``width`` (the stem's
    channels; stage s has width * 2**s inner and 4x that outer channels), ``in_channels``,
    ``num_classes``. ResNet50: (3, 4, 6, 3), 64."""

    layers: tuple
    width: int
    in_channels: int
    num_classes: int
    classifier: str = "fc"

    family = "resnet"
    expansion = 4

    @property
    def name(self):
        if (self.layers, self.width) == ((3, 4, 6, 3), 64):
            return "ResNet50"
        return f"ResNet{list(self.layers)}-w{self.width}"

    def expected(self):
        shapes = {"conv1.weight": (self.width, self.in_channels, 7, 7), **_bn_shapes("bn1", self.width)}
        inplanes = self.width
        for s, count in enumerate(self.layers):
            planes = self.width * 2 ** s
            for j in range(count):
                stem = f"layer{s + 1}.{j}"
                shapes[f"{stem}.conv1.weight"] = (planes, inplanes, 1, 1)
                shapes.update(_bn_shapes(f"{stem}.bn1", planes))
                shapes[f"{stem}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn_shapes(f"{stem}.bn2", planes))
                shapes[f"{stem}.conv3.weight"] = (planes * self.expansion, planes, 1, 1)
                shapes.update(_bn_shapes(f"{stem}.bn3", planes * self.expansion))
                if j == 0:
                    shapes[f"{stem}.downsample.0.weight"] = (planes * self.expansion, inplanes, 1, 1)
                    shapes.update(_bn_shapes(f"{stem}.downsample.1", planes * self.expansion))
                inplanes = planes * self.expansion
        shapes[f"{self.classifier}.weight"] = (self.num_classes, inplanes)
        shapes[f"{self.classifier}.bias"] = (self.num_classes,)
        return shapes


def _bn_shapes(stem, channels):
    return {f"{stem}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}


def _shape(state, key):
    return tuple(state[key].shape) if key in state else None


def infer_config(state, classifier=None):
    """The DenseNetConfig or ResNetConfig a canonical state dict (``canonical_keys``) holds,
    read off its keys and shapes; ``classifier``: the head's key stem when it is not the
    family's own (``classifier.0`` of the CheXNet reproductions). CheckpointMismatch naming the
    tensors both families start with when it is neither."""
    if "features.conv0.weight" in state:
        conv0 = state["features.conv0.weight"]
        blocks = []
        while any(k.startswith(f"features.denseblock{len(blocks) + 1}.") for k in state):
            b = len(blocks) + 1
            blocks.append(len({k.split(".")[2] for k in state if k.startswith(f"features.denseblock{b}.")}))
        first = "features.denseblock1.denselayer1"
        if not blocks or _shape(state, f"{first}.conv2.weight") is None or _shape(state, f"{first}.conv1.weight") is None:
            raise CheckpointMismatch(_mismatch_text("DenseNet", {"features.conv0.weight": conv0.shape,
                                                                 f"{first}.conv1.weight": "(bn_size*k, C, 1, 1)",
                                                                 f"{first}.conv2.weight": "(k, bn_size*k, 3, 3)"},
                                                    state, [f"{first}.conv1.weight"]))
        growth = int(state[f"{first}.conv2.weight"].shape[0])
        inner = int(state[f"{first}.conv1.weight"].shape[0])
        classifier = classifier or "classifier"
        classes = _shape(state, f"{classifier}.weight")
        return DenseNetConfig(tuple(blocks), growth, int(conv0.shape[0]), max(1, inner // growth),
                              int(conv0.shape[1]), int(classes[0]) if classes else 0, classifier)
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        stages = []
        while any(k.startswith(f"layer{len(stages) + 1}.") for k in state):
            s = len(stages) + 1
            stages.append(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}))
        conv1 = state["conv1.weight"]
        classifier = classifier or "fc"
        classes = _shape(state, f"{classifier}.weight")
        return ResNetConfig(tuple(stages), int(conv1.shape[0]), int(conv1.shape[1]),
                            int(classes[0]) if classes else 0, classifier)
    raise CheckpointMismatch(
        "the checkpoint is neither a torchvision DenseNet nor a bottleneck ResNet: expected "
        "features.conv0.weight, features.norm0.*, features.denseblock1.denselayer1.* ... classifier.* "
        "(DenseNet121: torchxrayvision, CheXNet) or conv1.weight, bn1.*, layer1.0.* ... fc.* "
        f"(torchxrayvision's ResNet50); its first tensors are {_first(state)}")


def _first(state, n=MAX_LISTED):
    keys = list(state)
    return ", ".join(f"{k} {tuple(np.shape(state[k]))}" for k in keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _mismatch_text(name, expected, state, bad, unexpected=()):
    listed = list(expected.items())
    lines = [f"the checkpoint does not fit a {name} ({len(expected)} tensors expected; nothing was loaded):",
             "  expected: " + ", ".join(f"{k} {tuple(v) if isinstance(v, tuple) else v}" for k, v in listed[:MAX_LISTED])
             + (f" ... ({len(listed) - MAX_LISTED} more)" if len(listed) > MAX_LISTED else "")]
    if bad:
        lines.append(f"  first that did not fit ({len(bad)} in all): " + ", ".join(
            f"{k}: {'missing' if k not in state else f'{tuple(state[k].shape)}, expected {tuple(expected[k])}'}"
            for k in bad[:MAX_LISTED]))
    if unexpected:
        lines.append(f"  not part of it ({len(unexpected)} in all): " + ", ".join(
            f"{k} {tuple(state[k].shape)}" for k in unexpected[:MAX_LISTED]))
    return "\n".join(lines)


def check_state(state, config):
    """CheckpointMismatch unless ``state`` holds exactly the tensors of ``config`` with their
    shapes (the message lists the expected tensors and the first that did not fit)."""
    expected = config.expected()
    bad = [k for k, shape in expected.items() if _shape(state, k) != tuple(shape)]
    unexpected = [k for k in state if k not in expected]
    if bad or unexpected or config.num_classes < 1:
        raise CheckpointMismatch(_mismatch_text(config.name, expected, state, bad, unexpected))


# --------------------------------------------------------------------------- builders
def _bn(x, name):
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, name=name)(x)


def _densenet_features(x, config):
    """The DenseNet-BC feature extractor with keras.applications' layer names; returns the
    final ReLU map ("relu")."""
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(config.init_features, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _bn(x, "conv1_bn")
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)  # after a ReLU: equal to PyTorch's -inf padding
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for b, count in enumerate(config.blocks, start=2):
        for i in range(1, count + 1):
            stem = f"conv{b}_block{i}"
            y = _bn(x, f"{stem}_0_bn")
            y = layers.Activation("relu", name=f"{stem}_0_relu")(y)
            y = layers.Conv2D(config.bn_size * config.growth_rate, 1, use_bias=False, name=f"{stem}_1_conv")(y)
            y = _bn(y, f"{stem}_1_bn")
            y = layers.Activation("relu", name=f"{stem}_1_relu")(y)
            y = layers.Conv2D(config.growth_rate, 3, padding="same", use_bias=False, name=f"{stem}_2_conv")(y)
            x = layers.Concatenate(axis=-1, name=f"{stem}_concat")([x, y])
        if b - 1 < len(config.blocks):
            x = _bn(x, f"pool{b}_bn")
            x = layers.Activation("relu", name=f"pool{b}_relu")(x)
            x = layers.Conv2D(int(x.shape[-1]) // 2, 1, use_bias=False, name=f"pool{b}_conv")(x)
            x = layers.AveragePooling2D(2, strides=2, name=f"pool{b}_pool")(x)
    x = _bn(x, "bn")
    return layers.Activation("relu", name="relu")(x)


def _resnet_features(x, config):
    """The bottleneck ResNet (stride on the 3×3 convolution) with keras.applications' ResNet50
    layer names; returns the last block's output (``conv5_block3_out`` for ResNet50)."""
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(config.width, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _bn(x, "conv1_bn")
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for s, count in enumerate(config.layers):
        planes = config.width * 2 ** s
        for j in range(count):
            stem, stride = f"conv{s + 2}_block{j + 1}", (2 if s > 0 and j == 0 else 1)
            shortcut = x
            if j == 0:
                shortcut = layers.Conv2D(planes * config.expansion, 1, strides=stride, use_bias=False,
                                         name=f"{stem}_0_conv")(x)
                shortcut = _bn(shortcut, f"{stem}_0_bn")
            y = layers.Conv2D(planes, 1, use_bias=False, name=f"{stem}_1_conv")(x)
            y = layers.Activation("relu", name=f"{stem}_1_relu")(_bn(y, f"{stem}_1_bn"))
            y = layers.ZeroPadding2D(1, name=f"{stem}_2_pad")(y)  # symmetric, as PyTorch pads
            y = layers.Conv2D(planes, 3, strides=stride, use_bias=False, name=f"{stem}_2_conv")(y)
            y = layers.Activation("relu", name=f"{stem}_2_relu")(_bn(y, f"{stem}_2_bn"))
            y = layers.Conv2D(planes * config.expansion, 1, use_bias=False, name=f"{stem}_3_conv")(y)
            y = _bn(y, f"{stem}_3_bn")
            x = layers.Add(name=f"{stem}_add")([shortcut, y])
            x = layers.Activation("relu", name=f"{stem}_out")(x)
    return x


FEATURES = {"densenet": _densenet_features, "resnet": _resnet_features}
GRADCAM = {"densenet": "densenet121", "resnet": "resnet50"}
"""The registered architecture whose Grad-CAM layers (and pipeline) an imported family shares."""


def source_preprocess(image, preprocessing):
    """(B, S, S, 1) raw 0..255 -> the source's input tensor (``PREPROCESSING``), built-in layers
    only; the last layer is named "preprocess"."""
    if preprocessing == "xrv":
        return layers.Rescaling(2048.0 / 255.0, -1024.0, name="preprocess")(image)
    if preprocessing == "imagenet":
        return preprocess(image, "torch", name="preprocess")
    raise ValueError(f"preprocessing={preprocessing!r}: expected one of {sorted(PREPROCESSING)}")


def build_network(config, image_size, preprocessing, dropout=0.0, source_space=False, name=None):
    """The Keras model of ``config`` (DenseNetConfig | ResNetConfig), weights not yet set.

    source_space False: input "image" (S, S, 1) raw 0..255 -> the source's preprocessing ->
    network -> "features" -> "head_dropout_1" (``dropout``) -> "predictions" (sigmoid, float32).
    source_space True: input "source" (S, S, C) already preprocessed by the source's pipeline,
    output the logits ("logits", linear): what parity compares with PyTorch."""
    channels = PREPROCESSING[preprocessing][0]
    if channels != config.in_channels:
        raise CheckpointMismatch(f"{config.name} takes {config.in_channels} input channel(s) but the "
                                 f"{preprocessing!r} preprocessing gives {channels}")
    if source_space:
        inputs = keras.Input((image_size, image_size, channels), name="source")
        x = inputs
    else:
        inputs = keras.Input((image_size, image_size, 1), name="image")
        x = source_preprocess(inputs, preprocessing)
    fmap = FEATURES[config.family](x, config)
    features = layers.GlobalAveragePooling2D(name="features")(fmap)
    if source_space:
        outputs = layers.Dense(config.num_classes, dtype="float32", name="logits")(features)
    else:
        outputs = classification_head(features, config.num_classes, dropout, False, hidden=0)
    return keras.Model(inputs, outputs, name=name or config.family)


# --------------------------------------------------------------------------- weights
def _conv(w):
    return np.transpose(w, (2, 3, 1, 0))


def _bn_weights(state, stem):
    return [state[f"{stem}.weight"], state[f"{stem}.bias"], state[f"{stem}.running_mean"], state[f"{stem}.running_var"]]


def _densenet_plan(config):
    """[(keras layer, torch stem, kind)] of a DenseNet-BC."""
    plan = [("conv1_conv", "features.conv0", "conv"), ("conv1_bn", "features.norm0", "bn")]
    for b, count in enumerate(config.blocks, start=1):
        for i in range(1, count + 1):
            k, t = f"conv{b + 1}_block{i}", f"features.denseblock{b}.denselayer{i}"
            plan += [(f"{k}_0_bn", f"{t}.norm1", "bn"), (f"{k}_1_conv", f"{t}.conv1", "conv"),
                     (f"{k}_1_bn", f"{t}.norm2", "bn"), (f"{k}_2_conv", f"{t}.conv2", "conv")]
        if b < len(config.blocks):
            plan += [(f"pool{b + 1}_bn", f"features.transition{b}.norm", "bn"),
                     (f"pool{b + 1}_conv", f"features.transition{b}.conv", "conv")]
    return plan + [("bn", "features.norm5", "bn")]


def _resnet_plan(config):
    plan = [("conv1_conv", "conv1", "conv"), ("conv1_bn", "bn1", "bn")]
    for s, count in enumerate(config.layers):
        for j in range(count):
            k, t = f"conv{s + 2}_block{j + 1}", f"layer{s + 1}.{j}"
            if j == 0:
                plan += [(f"{k}_0_conv", f"{t}.downsample.0", "conv"), (f"{k}_0_bn", f"{t}.downsample.1", "bn")]
            for n in (1, 2, 3):
                plan += [(f"{k}_{n}_conv", f"{t}.conv{n}", "conv"), (f"{k}_{n}_bn", f"{t}.bn{n}", "bn")]
    return plan


def assign_weights(model, state, config):
    """Set ``model``'s weights (built by ``build_network(config, ...)``) from the canonical state
    dict ``state``, after ``check_state``. Returns the model."""
    check_state(state, config)
    plan = _densenet_plan(config) if config.family == "densenet" else _resnet_plan(config)
    for layer_name, stem, kind in plan:
        layer = model.get_layer(layer_name)
        layer.set_weights([_conv(state[f"{stem}.weight"])] if kind == "conv" else _bn_weights(state, stem))
    head = next(layer for layer in model.layers if layer.name in ("predictions", "logits"))
    head.set_weights([state[f"{config.classifier}.weight"].T, state[f"{config.classifier}.bias"]])
    return model


def convert(state, image_size, preprocessing, prefixes=(), classifier=None, dropout=0.0, source_space=False,
            name=None):
    """(keras model, config): the network a torch state dict (``{key: array}``) holds, rebuilt
    in Keras with its weights. ``prefixes``: key prefixes to strip (``module.densenet121.``);
    ``classifier``: the head's key stem when not the family's own. CheckpointMismatch when the
    tensors do not make one whole network."""
    canonical = canonical_keys(state, prefixes)
    config = infer_config(canonical, classifier)
    check_state(canonical, config)
    model = build_network(config, image_size, preprocessing, dropout=dropout, source_space=source_space, name=name)
    return assign_weights(model, canonical, config), config


def logits_model(model):
    """(inputs -> logits) of a converted model: its "features" followed by the "predictions"
    layer's kernel and bias with no sigmoid (probabilities near 0 and 1 hide differences)."""
    dense = model.get_layer("predictions")
    features = model.get_layer("features").output
    logits = layers.Dense(dense.units, dtype="float32", name="logits")
    out = logits(features)
    logits.set_weights(dense.get_weights())
    return keras.Model(model.inputs, out, name=f"{model.name}_logits")
