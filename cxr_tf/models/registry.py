"""Architecture registry: each name maps to its builder and the facts other code
needs about it (default input size, Grad-CAM layer, backbone taps). New models are
added with ``@register(...)`` on their builder, not by editing a dispatcher."""

from dataclasses import dataclass, field

import keras

from cxr_tf.labels import NUM_LABELS


@dataclass(frozen=True)
class ModelSpec:
    """What the package knows about one architecture.

    builder: ``builder(image_size, num_labels, weights, dropout, mc_dropout, **kw) -> keras.Model``
    default_size: training input size in pixels (square).
    gradcam_layer: name of the 4-D feature-map layer Grad-CAM differentiates.
    backbone_outputs: layers ending the pretrained backbone(s); everything they depend on
        is "the backbone" for freezing. Empty for models trained from scratch.
    multimodal: takes ``{"image", "meta"}``.
    min_size: smallest input size that builds.
    """

    name: str
    builder: object
    default_size: int
    gradcam_layer: str
    backbone_outputs: tuple = field(default_factory=tuple)
    multimodal: bool = False
    min_size: int = 32


ARCHITECTURES = {}


def register(name, **facts):
    """Decorator registering ``builder`` under ``name`` with the `ModelSpec` facts."""

    def wrap(builder):
        ARCHITECTURES[name] = ModelSpec(name=name, builder=builder, **facts)
        return builder

    return wrap


def spec_for(arch):
    """The `ModelSpec` of ``arch``; ValueError listing the valid names otherwise."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def build_model(arch, image_size=None, num_labels=NUM_LABELS, weights=None, dropout=0.5, mc_dropout=False, **kwargs):
    """A compiled-free Keras functional model for ``arch``.

    Input ``image``: raw pixels 0–255, shape (image_size, image_size, 1) (multimodal
    models also take ``meta``, shape (5,)); output ``predictions``: (num_labels,)
    sigmoids, float32 even under mixed precision. ``weights``: None (random init),
    ``"imagenet"`` (backbones; the Keras download or the file already in
    ``$KERAS_HOME/models``), or a path to a ``.weights.h5`` of this same model.
    ``mc_dropout=True`` makes the head's dropout always on (`cxr_tf.layers.MCDropout`).
    """
    spec = spec_for(arch)
    image_size = image_size or spec.default_size
    if image_size < spec.min_size:
        raise ValueError(f"{arch}: image_size={image_size} is below the smallest size it builds at ({spec.min_size})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout}: expected a rate in [0, 1)")
    is_path = weights not in (None, "imagenet")
    model = spec.builder(image_size=image_size, num_labels=num_labels,
                         weights=None if is_path else weights, dropout=dropout, mc_dropout=mc_dropout, **kwargs)
    if is_path:
        model.load_weights(weights)
    return model


def backbone_layers(model):
    """The layers of ``model``'s pretrained backbone(s) (empty for from-scratch models)."""
    spec = spec_for(model.name)
    if not spec.backbone_outputs:
        return []
    image = model.get_layer("image").output
    taps = [model.get_layer(name).output for name in spec.backbone_outputs]
    return [layer for layer in keras.Model(image, taps).layers if layer.weights]


def set_backbone_trainable(model, trainable, train_batchnorm=False):
    """Freeze (``trainable=False``) or unfreeze the backbone of ``model`` in place, for
    two-phase training; recompile afterwards. BatchNormalization layers of the backbone
    stay frozen — and so in inference mode, keeping their ImageNet statistics — unless
    ``train_batchnorm`` (the Keras fine-tuning advice for small batches)."""
    for layer in backbone_layers(model):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable and (train_batchnorm or not is_bn)
    return model
