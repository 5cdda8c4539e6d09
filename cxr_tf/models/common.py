"""Pieces every builder shares: the image input and the classification head."""

import keras

from cxr_tf.layers import MCDropout


def image_input(image_size):
    """The ``image`` input: raw greyscale pixels 0–255, (image_size, image_size, 1)."""
    return keras.Input((image_size, image_size, 1), name="image")


def dropout_layer(rate, mc_dropout, name):
    """Plain Dropout, or always-on `MCDropout` for Monte-Carlo sampling."""
    return (MCDropout if mc_dropout else keras.layers.Dropout)(rate, name=name)


def predictions(x, num_labels):
    """The output layer: ``num_labels`` independent sigmoids, float32 under any policy."""
    return keras.layers.Dense(num_labels, activation="sigmoid", dtype="float32", name="predictions")(x)


def dense_head(features, num_labels, dropout, mc_dropout, units=512):
    """features (B, D) → dropout → Dense(units, ReLU) → dropout → sigmoids (B, num_labels)."""
    x = dropout_layer(dropout, mc_dropout, "head_dropout_1")(features)
    x = keras.layers.Dense(units, activation="relu", name="head_dense")(x)
    x = dropout_layer(dropout, mc_dropout, "head_dropout_2")(x)
    return predictions(x, num_labels)
