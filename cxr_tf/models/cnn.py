"""From-scratch CNNs: ``simple_cnn`` (the baseline of the fusion study) and
``multimodal`` (image + age/sex/view branches, after the multimodal-CNN study)."""

import keras
from keras import layers

from cxr_tf.models.layers import preprocess
from cxr_tf.models.heads import (
    check_from_scratch, classification_head, image_input, load_weights_file, meta_input,
)


def build_simple_cnn(image_size=224, num_labels=14, weights=None, dropout=0.5, mc_dropout=False, head_units=256):
    """Three conv(3×3, same)/BatchNorm/ReLU/max-pool stages (32, 64, 128 filters),
    global average pooling ("features", 128), then the head with Dense ``head_units``.
    Grad-CAM layer: "conv3_relu"."""
    check_from_scratch("simple_cnn", weights)
    image = image_input(image_size)
    x = preprocess(image, "unit", channels=1, name="preprocess")
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # BatchNorm (not in the study's baseline) makes it train in a few epochs from scratch
        x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = classification_head(features, num_labels, dropout, mc_dropout, hidden=head_units)
    return load_weights_file(keras.Model(image, outputs, name="simple_cnn"), weights)


def build_multimodal(image_size=224, num_labels=14, weights=None, dropout=0.5, mc_dropout=False,
                     block_dropout=0.25, head_units=0):
    """Image branch: four blocks of two 3×3 convs, BatchNorm, ReLU, max-pool and
    dropout (32, 64, 128, 256 filters), global average pooling, Dense 256 ReLU.
    Metadata branch: "meta" (5,) -> Dense 32 ReLU. Both concatenated ("features",
    288) -> dropout -> [Dense ``head_units`` ReLU -> dropout] -> Dense sigmoid. Grad-CAM layer:
    "block4_relu"."""
    check_from_scratch("multimodal", weights)
    image, meta = image_input(image_size), meta_input()
    x = preprocess(image, "unit", channels=1, name="preprocess")
    for i, filters in enumerate((32, 64, 128, 256), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv1")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.Activation("relu", name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = layers.Dropout(block_dropout, name=f"block{i}_drop")(x)
    x = layers.GlobalAveragePooling2D(name="image_pool")(x)
    x = layers.Dense(256, activation="relu", name="image_dense")(x)
    m = layers.Dense(32, activation="relu", name="meta_dense")(meta)
    features = layers.Concatenate(name="features")([x, m])
    outputs = classification_head(features, num_labels, dropout, mc_dropout, hidden=head_units)
    model = keras.Model({"image": image, "meta": meta}, outputs, name="multimodal")
    return load_weights_file(model, weights)
