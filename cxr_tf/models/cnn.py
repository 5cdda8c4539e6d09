"""Models trained from scratch: the small CNN baseline and the multimodal CNN
(image branch + age/sex/view branch, ../shared/seeds/001)."""

import keras

from cxr_tf.data import META_DIM
from cxr_tf.layers import BackboneInput
from cxr_tf.models.common import dense_head, dropout_layer, image_input, predictions
from cxr_tf.models.registry import register


@register("simple_cnn", default_size=224, gradcam_layer="conv3", min_size=16)
def simple_cnn(image_size, num_labels, weights, dropout, mc_dropout):
    """Three conv/pool stages (32, 64, 128 filters), global pooling, dense 256, sigmoids."""
    if weights is not None:
        raise ValueError("simple_cnn has no pretrained weights: use weights=None or a weights file path")
    image = image_input(image_size)
    x = BackboneInput("unit", name="scale")(image)
    for stage, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"conv{stage}")(x)
        if stage < 3:  # the last map stays unpooled: it is the Grad-CAM layer
            x = keras.layers.MaxPooling2D(name=f"pool{stage}")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    x = dropout_layer(dropout, mc_dropout, "head_dropout_1")(features)
    x = keras.layers.Dense(256, activation="relu", name="head_dense")(x)
    x = dropout_layer(dropout, mc_dropout, "head_dropout_2")(x)
    return keras.Model(image, predictions(x, num_labels), name="simple_cnn")


def _conv_block(x, filters, stage, dropout):
    """Two 3×3 conv → BN → ReLU rounds, 2×2 max-pool, dropout (the study's block)."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{stage}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"block{stage}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"block{stage}_relu{i}")(x)
    x = keras.layers.MaxPooling2D(name=f"block{stage}_pool")(x)
    return keras.layers.Dropout(dropout, name=f"block{stage}_dropout")(x)


@register("multimodal", default_size=224, gradcam_layer="block4_relu2", multimodal=True)
def multimodal(image_size, num_labels, weights, dropout, mc_dropout, block_dropout=0.1):
    """Image branch (four conv blocks, 32–256 filters, global pooling) joined with a
    metadata branch (age, sex, view → Dense 32) before a dense-256 head."""
    if weights is not None:
        raise ValueError("multimodal has no pretrained weights: use weights=None or a weights file path")
    image = image_input(image_size)
    meta = keras.Input((META_DIM,), name="meta")
    x = BackboneInput("unit", name="scale")(image)
    for stage, filters in enumerate((32, 64, 128, 256), start=1):
        if stage == 4:  # no pooling after the last block: its ReLU is the Grad-CAM layer
            for i in (1, 2):
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block4_conv{i}")(x)
                x = keras.layers.BatchNormalization(name=f"block4_bn{i}")(x)
                x = keras.layers.ReLU(name=f"block4_relu{i}")(x)
        else:
            x = _conv_block(x, filters, stage, block_dropout)
    image_vector = keras.layers.GlobalAveragePooling2D(name="image_pool")(x)
    meta_vector = keras.layers.Dense(32, activation="relu", name="meta_dense")(meta)
    features = keras.layers.Concatenate(name="features")([image_vector, meta_vector])
    outputs = dense_head(features, num_labels, dropout, mc_dropout, units=256)
    return keras.Model({"image": image, "meta": meta}, outputs, name="multimodal")
