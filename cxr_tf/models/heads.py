"""Pieces every builder shares: the inputs, the classification head and the
weights policy (never copied into a family file)."""

from pathlib import Path

import keras
from keras import layers

from cxr_tf.data.labels import META_DIM



def image_input(image_size):
    """The "image" input: (H, W, 1) raw pixel values 0..255, float."""
    return keras.Input(shape=(image_size, image_size, 1), name="image")


def meta_input():
    """The "meta" input of multimodal models: (5,) float, see ``META_DIM``."""
    return keras.Input(shape=(META_DIM,), name="meta")


def classification_head(features, num_labels, dropout, mc_dropout, hidden=512):
    """features (B, F) -> probabilities (B, num_labels) float32 in 0..1.

    dropout -> Dense ``hidden`` ReLU -> dropout -> Dense sigmoid "predictions"
    (``hidden`` 0 or None gives dropout -> Dense sigmoid). The dropout layers are
    built-in ``Dropout`` whatever ``mc_dropout`` says, so model.keras stays loadable
    without cxr_tf; Monte-Carlo sampling swaps them for always-on dropout in a clone
    of the head at inference time (``cxr_tf.inference.uncertainty``). ``mc_dropout``
    is kept for the configs' sake and has no effect on the graph.
    """
    del mc_dropout  # sampling is the inference layer's job (see above)
    drop = layers.Dropout
    x = drop(dropout, name="head_dropout_1")(features)
    if hidden:
        x = layers.Dense(hidden, activation="relu", name="head_dense")(x)
        x = drop(dropout, name="head_dropout_2")(x)
    # float32 even under a mixed_float16 policy: sigmoids and the loss need it
    return layers.Dense(num_labels, activation="sigmoid", dtype="float32", name="predictions")(x)


def application_weights(weights):
    """What to pass to ``keras.applications`` for ``weights``: "imagenet" or None
    (a file path is loaded afterwards by ``load_weights_file``)."""
    return "imagenet" if weights == "imagenet" else None


def load_weights_file(model, weights):
    """Load ``weights`` into ``model`` when it is a path (no-op for None / "imagenet")."""
    if weights is None or weights == "imagenet":
        return model
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist: pass None, 'imagenet' or an existing "
                                f".weights.h5 / .keras file saved from the same architecture")
    model.load_weights(str(path))
    return model


def check_from_scratch(arch, weights):
    """The from-scratch CNNs have no ImageNet weights."""
    if weights == "imagenet":
        raise ValueError(f"{arch} has no ImageNet weights: pass weights=None or a weights file")
