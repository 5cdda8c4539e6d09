"""The model zoo: ``build_model(arch, ...)`` over one registry.

=============== ============================================================
arch            what it is
=============== ============================================================
simple_cnn      three conv/pool stages, global pooling, dense 256
multimodal      four conv blocks + age/sex/view branch (input ``meta``)
densenet121     CheXNet-style DenseNet121 + head
efficientnetb0  EfficientNetB0 + head
resnet50        ResNet50 + head
fusion          DenseNet121 + EfficientNetB3, cross-attention fusion
=============== ============================================================
"""

from cxr_tf.models import applications, cnn, fusion  # noqa: F401  (they register themselves)
from cxr_tf.models.registry import (
    ARCHITECTURES,
    ModelSpec,
    backbone_layers,
    build_model,
    set_backbone_trainable,
    spec_for,
)

__all__ = ["ARCHITECTURES", "ModelSpec", "backbone_layers", "build_model", "set_backbone_trainable", "spec_for"]
