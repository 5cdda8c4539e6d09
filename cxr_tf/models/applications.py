"""ImageNet backbones from keras.applications with the shared head
(global average pooling → dropout → Dense 512 → dropout → sigmoids).

The backbone is built on the model's own preprocessed input (``input_tensor``), so
its layers sit flat in the model and Grad-CAM and freezing can name them."""

from functools import partial

import keras

from cxr_tf.layers import BackboneInput
from cxr_tf.models.common import dense_head, image_input
from cxr_tf.models.registry import register

# name: (keras.applications constructor, preprocessing mode, last feature-map layer)
BACKBONES = {
    "densenet121": (keras.applications.DenseNet121, "torch", "relu"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "raw", "top_activation"),
    "resnet50": (keras.applications.ResNet50, "caffe", "conv5_block3_out"),
}


def _build(name, image_size, num_labels, weights, dropout, mc_dropout):
    constructor, mode, last = BACKBONES[name]
    image = image_input(image_size)
    x = BackboneInput(mode, name="to_backbone")(image)
    backbone = constructor(include_top=False, weights=weights, input_tensor=x)
    feature_map = backbone.get_layer(last).output  # (B, S/32, S/32, C)
    features = keras.layers.GlobalAveragePooling2D(name="features")(feature_map)
    return keras.Model(image, dense_head(features, num_labels, dropout, mc_dropout), name=name)


for _name, (_, _, _last) in BACKBONES.items():
    register(_name, default_size=224, gradcam_layer=_last, backbone_outputs=(_last,))(partial(_build, _name))
