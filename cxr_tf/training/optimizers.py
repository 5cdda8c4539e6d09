"""The optimizer of a run, from the ``optimizer`` block of a pipeline config (the learning rate
comes from each phase)."""

import keras

OPTIMIZERS = ("adam", "adamw", "sgd")
"""The ``optimizer.name`` values of a pipeline config."""


def make_optimizer(settings, learning_rate):
    """A fresh Keras optimizer: ``settings`` {"name", "weight_decay", "momentum"}; learning_rate
    float > 0."""
    name = settings["name"]
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=float(settings.get("weight_decay", 0.0)))
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=float(settings.get("momentum", 0.0)))
    raise ValueError(f"optimizer name {name!r}: allowed values are {', '.join(OPTIMIZERS)}")
