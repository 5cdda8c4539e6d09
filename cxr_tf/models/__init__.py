"""The model zoo behind one registry.

``build_model(arch, image_size=224, num_labels=14, weights=None, dropout=0.5,
mc_dropout=False, **kw)`` is the one entry point; ``ARCHITECTURES`` maps each
name to its ``ArchSpec`` (builder, default input size, Grad-CAM layers,
multimodal flag). New models are added by registering, not by editing a
dispatcher. ``model_input_spec(model)`` reads (image size, multimodal) off a
built or loaded model: the one answer to "is this model multimodal?" once a
model exists.

Every model: input "image" (H, W, 1) raw pixels 0..255 (multimodal adds "meta"
(5,)); a layer "features" (the pooled vector feeding the head); a head of
dropout/Dense layers named "head_*"; output layer "predictions" (sigmoid,
float32).
"""

from dataclasses import dataclass
from typing import Callable

import keras

from cxr_tf.data.labels import NUM_LABELS
from cxr_tf.models.applications import build_densenet121, build_efficientnetb0, build_resnet50
from cxr_tf.models.cnn import build_multimodal, build_simple_cnn
from cxr_tf.models.fusion import build_fusion
from cxr_tf.models.heads import META_DIM


@dataclass(frozen=True)
class ArchSpec:
    """builder(image_size, num_labels, weights, dropout, mc_dropout, **kw) -> keras.Model;
    default_size in px; gradcam_layer: name of the deepest 4-D feature-map layer used
    for Grad-CAM; gradcam_fallbacks: shallower feature maps (finer grids, deep to
    shallow) used when ``gradcam_layer`` is coarser than ``MIN_CAM_GRID`` at the
    model's input size (``gradcam_layer_for``); multimodal: takes {"image", "meta"};
    min_size: smallest image_size that builds."""

    builder: Callable
    default_size: int
    gradcam_layer: str
    multimodal: bool = False
    min_size: int = 32
    gradcam_fallbacks: tuple = ()

    @property
    def gradcam_layers(self):
        """Grad-CAM candidates, deepest (coarsest) first."""
        return (self.gradcam_layer, *self.gradcam_fallbacks)


MIN_CAM_GRID = 7
"""Smallest Grad-CAM grid side (cells) that can localise: below it a map says which
half of the chest, not where (the DenseNet121 stride-32 map is 3×3 at 96 px)."""

# Fallbacks halve the stride each step: stride 32 -> 16 -> 8 -> 4 for the ImageNet
# backbones (their last map at stride 16, 8, 4), so each one has a grid of at least
# 8×8 at its 32 px minimum; the from-scratch CNNs step back one block at a time.
ARCHITECTURES = {
    "simple_cnn": ArchSpec(build_simple_cnn, 224, "conv3_relu", min_size=24,
                           gradcam_fallbacks=("conv2_relu", "conv1_relu")),
    "densenet121": ArchSpec(build_densenet121, 224, "relu",
                            gradcam_fallbacks=("pool4_conv", "pool3_conv", "pool2_conv")),
    "efficientnetb0": ArchSpec(build_efficientnetb0, 224, "top_activation",
                               gradcam_fallbacks=("block6a_expand_activation", "block4a_expand_activation",
                                                  "block3a_expand_activation")),
    "resnet50": ArchSpec(build_resnet50, 224, "conv5_block3_out",
                         gradcam_fallbacks=("conv4_block6_out", "conv3_block4_out", "conv2_block3_out")),
    "multimodal": ArchSpec(build_multimodal, 224, "block4_relu", multimodal=True, min_size=16,
                           gradcam_fallbacks=("block3_relu", "block2_relu", "block1_relu")),
    # below the fused stride-16 map, the DenseNet stream's stride-8 and stride-4 maps
    "fusion": ArchSpec(build_fusion, 224, "fusion_map", gradcam_fallbacks=("pool3_conv", "pool2_conv")),
}

NON_BACKBONE_PREFIXES = ("image", "meta", "preprocess", "fusion_", "features", "head_", "predictions")
"""Layers whose names start with these are not backbone: set_backbone_trainable
leaves them trainable (phase 1 trains the head and the fusion layers)."""


def get_spec(arch):
    """The ArchSpec of ``arch``; ValueError listing the valid names otherwise."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_model(arch, image_size=224, num_labels=NUM_LABELS, weights=None, dropout=0.5, mc_dropout=False, **kw):
    """Build architecture ``arch`` (see ``ARCHITECTURES``).

    image_size: square input side in px (>= the spec's min_size); weights: None
    (random init), "imagenet" (keras.applications weights; downloaded, or read
    from ``$KERAS_HOME/models`` offline) or a path to a weights file saved from
    the same architecture; dropout: head dropout rate; mc_dropout: always-on
    head dropout (``cxr_tf.models.layers.MCDropout``); ``head_units`` (keyword): width of the
    head's hidden Dense layer, 0 for none (default: the architecture's own).
    """
    spec = get_spec(arch)
    if int(image_size) < spec.min_size:
        raise ValueError(f"{arch}: image_size={image_size} is below its minimum of {spec.min_size} px")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout}: expected a rate in [0, 1)")
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels}: expected >= 1")
    return spec.builder(image_size=int(image_size), num_labels=int(num_labels), weights=weights,
                        dropout=float(dropout), mc_dropout=bool(mc_dropout), **kw)


def model_input_spec(model):
    """(image_size, multimodal) of a cxr_tf model, read from its named inputs: "image"
    (S, S, 1) gives S; a "meta" input makes it multimodal. For a model built by
    ``build_model`` or loaded from a run's model.keras (``ArchSpec.multimodal`` says the
    same of an architecture before it is built). ValueError naming the inputs when the
    model has no "image" input."""
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if "image" not in names:
        raise ValueError(f"model {model.name!r} has inputs {names}: a cxr_tf model takes 'image' (S, S, 1) "
                         f"and, when multimodal, 'meta' ({META_DIM},); build it with cxr_tf.models.build_model")
    return int(model.inputs[names.index("image")].shape[1]), "meta" in names


def gradcam_layer_for(model, arch):
    """The Grad-CAM layer of ``model`` (built by ``build_model(arch, ...)``): the
    deepest of the spec's ``gradcam_layers`` whose grid is at least ``MIN_CAM_GRID``
    cells a side, else the finest one. ValueError when the model lacks them."""
    spec = get_spec(arch)
    grids = {}
    for name in spec.gradcam_layers:
        try:
            shape = model.get_layer(name).output.shape
        except ValueError:
            continue
        grids[name] = min(shape[1], shape[2])
    if spec.gradcam_layer not in grids:
        raise ValueError(f"model {model.name!r} has no layer {spec.gradcam_layer!r}, the Grad-CAM layer of "
                         f"{arch!r}: was it built by cxr_tf.models.build_model({arch!r})?")
    for name, side in grids.items():
        if side is not None and side >= MIN_CAM_GRID:
            return name
    return max(grids, key=lambda n: grids[n] or 0)


def is_backbone_layer(layer):
    """True for layers of the feature extractor (not preprocessing, fusion or head)."""
    return not layer.name.startswith(NON_BACKBONE_PREFIXES)


def set_backbone_trainable(model, trainable, train_bn=False):
    """Freeze (``trainable=False``) or unfreeze the backbone layers of ``model`` in place.

    Head and fusion layers stay trainable. Frozen BatchNormalization layers run
    in inference mode (Keras 3 semantics of ``trainable=False``); on unfreezing,
    BatchNormalization stays frozen unless ``train_bn`` (the usual fine-tuning
    practice with small batches: keep the pretrained statistics). Recompile the
    model afterwards. Returns the model.
    """
    for layer in model.layers:
        if not is_backbone_layer(layer):
            continue
        # keras.layers, spelled out: `layers` in this package is the submodule cxr_tf.models.layers
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = bool(trainable and train_bn)
        else:
            layer.trainable = bool(trainable)
    return model


__all__ = ["ARCHITECTURES", "ArchSpec", "META_DIM", "MIN_CAM_GRID", "build_model", "get_spec", "gradcam_layer_for",
           "model_input_spec", "set_backbone_trainable", "is_backbone_layer"]
