"""The model zoo behind one registry.

``build_model(arch, image_size=224, num_labels=14, weights=None, dropout=0.5,
mc_dropout=False, **kw)`` is the one entry point; ``ARCHITECTURES`` maps each
name to its ``ArchSpec`` (builder, default input size, Grad-CAM layer,
multimodal flag). New models are added by registering, not by editing a
dispatcher.

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
    default_size in px; gradcam_layer: name of a 4-D feature-map layer in the model;
    multimodal: takes {"image", "meta"}; min_size: smallest image_size that builds."""

    builder: Callable
    default_size: int
    gradcam_layer: str
    multimodal: bool = False
    min_size: int = 32


ARCHITECTURES = {
    "simple_cnn": ArchSpec(build_simple_cnn, 224, "conv3_relu", min_size=24),
    "densenet121": ArchSpec(build_densenet121, 224, "relu"),
    "efficientnetb0": ArchSpec(build_efficientnetb0, 224, "top_activation"),
    "resnet50": ArchSpec(build_resnet50, 224, "conv5_block3_out"),
    "multimodal": ArchSpec(build_multimodal, 224, "block4_relu", multimodal=True, min_size=16),
    "fusion": ArchSpec(build_fusion, 224, "fusion_map"),
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
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = bool(trainable and train_bn)
        else:
            layer.trainable = bool(trainable)
    return model


__all__ = ["ARCHITECTURES", "ArchSpec", "META_DIM", "build_model", "get_spec", "set_backbone_trainable",
           "is_backbone_layer"]
