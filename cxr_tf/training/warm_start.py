"""Fine-tuning from a run (``fit --init-from RUN``, config key ``init_from``): the model that
training starts from, built from a run's ``model.keras`` (one of ``fit``'s or of
``import_weights``') instead of the architecture's random or ImageNet weights.

- Every layer up to the head keeps the run's weights (its preprocessing too: an imported run
  keeps its source's scaling inside the model).
- The output layer ``predictions`` gets one unit per finding of the records: a finding the run
  already knows (same name in our vocabulary) keeps its kernel column and bias, a new one gets a
  fresh unit (Glorot kernel, zero bias); the run's findings the records do not label are dropped.
- The head's dropout layers take the config's ``dropout`` (an imported head has rate 0).
- Another input size rebuilds the same graph at that size (convolutions and pooling do not
  depend on it) and copies every weight.

Missing labels stay masked as in any run (the loss, ``cxr_tf.training.losses.MaskedLoss``), and
the config's phases apply: head first with the backbone frozen, then everything.
"""

import hashlib

import keras
from keras import layers

from cxr_tf import runs


def label_plan(run_labels, labels):
    """{"kept": [...], "new": [...], "dropped": [...]}: the findings of ``labels`` (the records')
    that the run knows, those it does not, and the run's that the records do not label."""
    run_labels, labels = list(run_labels), list(labels)
    return {"kept": [f for f in labels if f in run_labels], "new": [f for f in labels if f not in run_labels],
            "dropped": [f for f in run_labels if f not in labels]}


def describe(run_dir, labels):
    """What config.json records of the start: the run, its arch, whether it was imported (and
    from what), its model.keras SHA-256 and the label plan."""
    run = runs.Run(run_dir)
    digest = hashlib.sha256((run.path / runs.MODEL).read_bytes()).hexdigest()
    imported = run.config.get("imported") or None
    return {"run": str(run.path), "arch": run.arch, "model_sha256": digest,
            "imported": None if imported is None else {k: imported.get(k) for k in
                                                        ("source", "weights_set", "file", "sha256")},
            **label_plan(run.labels, labels)}


def _rebuilt(model, image_size, dropout):
    """``model``'s graph with an "image" input of ``image_size`` px and head dropout ``dropout``:
    every other layer is the run's own object (its weights; convolutions and pooling do not
    depend on the input size)."""
    inputs = [keras.Input((image_size, image_size, 1), name="image") if t.name.split(":")[0] == "image"
              else keras.Input(tuple(t.shape[1:]), name=t.name.split(":")[0]) for t in model.inputs]

    def layer_for(layer):
        if isinstance(layer, keras.layers.Dropout) and layer.name.startswith("head_"):
            return keras.layers.Dropout(float(dropout), name=layer.name)
        return layer

    structure = inputs if isinstance(model.input, (list, tuple)) else inputs[0]
    return keras.models.clone_model(model, input_tensors=structure, clone_function=layer_for)


def warm_start(run_dir, labels, image_size, dropout):
    """The model ``fit`` trains when ``init_from`` is set (module docstring): outputs = ``labels``."""
    run = runs.Run(run_dir)
    old = run.model.get_layer("predictions")
    trunk = keras.Model(run.model.input, old.input, name=run.model.name)  # everything before the output layer
    model = _rebuilt(trunk, int(image_size), dropout)
    fresh = layers.Dense(len(labels), activation="sigmoid", dtype="float32", name="predictions")
    outputs = fresh(model.outputs[0])
    kernel, bias = fresh.get_weights()
    old_kernel, old_bias = old.get_weights()
    for j, finding in enumerate(labels):
        if finding in run.labels:
            i = run.labels.index(finding)
            kernel[:, j], bias[j] = old_kernel[:, i], old_bias[i]
    fresh.set_weights([kernel, bias])
    return keras.Model(model.inputs, outputs, name=model.name)
