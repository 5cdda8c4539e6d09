"""ImageNet backbones from ``keras.applications`` under the shared head:
``densenet121`` (CheXNet style), ``efficientnetb0`` and ``resnet50``.

The backbone is built on the preprocessed image tensor, so its layers sit flat in
the returned model under their Keras names (Grad-CAM layers are found by name).
"""

import keras
from keras import layers

from cxr_tf.models.layers import preprocess
from cxr_tf.models.heads import application_weights, classification_head, image_input, load_weights_file

BACKBONES = {
    # name: (keras.applications constructor, preprocess mode, last feature-map layer)
    "densenet121": (keras.applications.DenseNet121, "torch", "relu"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "raw", "top_activation"),
    "resnet50": (keras.applications.ResNet50, "caffe", "conv5_block3_out"),
}


def backbone_output(name, image, weights, layer=None):
    """Preprocess ``image`` for backbone ``name`` and return the output tensor of
    its layer ``layer`` (default: the last feature map, stride 32)."""
    constructor, mode, last = BACKBONES[name]
    size = image.shape[1]
    x = preprocess(image, mode, name=f"preprocess_{name}")
    base = constructor(include_top=False, weights=application_weights(weights), input_tensor=x,
                       input_shape=(size, size, 3))
    return base.get_layer(layer or last).output


def build_application(name, image_size=224, num_labels=14, weights=None, dropout=0.5, mc_dropout=False,
                      head_units=512):
    """Backbone ``name`` -> GAP ("features") -> dropout -> Dense ``head_units`` ReLU -> dropout
    -> Dense sigmoid ("predictions")."""
    image = image_input(image_size)
    fmap = backbone_output(name, image, weights)
    features = layers.GlobalAveragePooling2D(name="features")(fmap)
    outputs = classification_head(features, num_labels, dropout, mc_dropout, hidden=head_units)
    return load_weights_file(keras.Model(image, outputs, name=name), weights)


def build_densenet121(**kw):
    """CheXNet-style DenseNet121 + shared head. Grad-CAM layer: "relu" (7×7×1024 at 224)."""
    return build_application("densenet121", **kw)


def build_efficientnetb0(**kw):
    """EfficientNetB0 + shared head. Grad-CAM layer: "top_activation" (7×7×1280 at 224)."""
    return build_application("efficientnetb0", **kw)


def build_resnet50(**kw):
    """ResNet50 + shared head. Grad-CAM layer: "conv5_block3_out" (7×7×2048 at 224)."""
    return build_application("resnet50", **kw)
