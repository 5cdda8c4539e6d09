"""Training losses for K independent sigmoids (one per finding of the label set), chosen by the
``loss`` block of a pipeline.

=============== ==================================================================
``loss.name``   loss
=============== ==================================================================
focal           ``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True,
                alpha, gamma)``: the fusion study's loss (alpha 0.25, gamma 2.0;
                docs/references.md), the same weighting as tensorflow-addons'
                ``SigmoidFocalCrossEntropy``
bce             ``keras.losses.BinaryCrossentropy``
weighted_bce    ``WeightedBinaryCrossentropy``: BCE with per-finding weights from the
                label prevalence p of the training split (the multimodal-CNN study): positives
                weigh 1 / (2p), negatives 1 / (2(1 - p)), so each finding's positives
                and negatives carry equal total weight and a finding at p = 0.5 gets
                plain BCE. p is floored at ``min_prevalence`` (a finding with no
                training positives would otherwise get an infinite weight).
=============== ==================================================================

All take ``y_true`` (B, K) and ``y_pred`` (B, K) probabilities (the models end in float32
sigmoids). ``make_loss`` wraps each in ``MaskedLoss``: a label of -1
(``cxr_tf.data.datasets.base.MISSING``: a finding the film's dataset does not label, or an
uncertain label under the "ignore" policy) contributes nothing, neither to the value nor to
the gradient, and the batch loss is the mean over the known (film, finding) pairs. With
every label known this is exactly the unmasked loss. For ``weighted_bce`` the caller's
prevalence must count known labels only (positives / known films per finding).

``MaskedLoss`` and ``WeightedBinaryCrossentropy`` are registered as ``cxr_tf>MaskedLoss``
and ``cxr_tf>WeightedBinaryCrossentropy`` with everything in their configs (the inner loss
through ``keras.losses.serialize``), so a model compiled with them and saved reloads with
``keras.models.load_model`` once ``cxr_tf.training.losses`` has been imported. A run's
``model.keras`` carries no loss at all (``cxr_tf.training.callbacks.AtomicModelCheckpoint``):
it loads without cxr_tf.
"""

import keras
import numpy as np
from keras import ops

from cxr_tf.data.datasets.base import MISSING

LOSSES = ("focal", "bce", "weighted_bce")
"""The ``loss.name`` values of a pipeline config."""


def prevalence_weights(prevalence, min_prevalence=1e-3):
    """(pos_weights, neg_weights), float32 arrays (K,), from per-finding prevalence
    in [0, 1]: 1 / (2p) and 1 / (2(1 - p)) with p clipped to [min_prevalence,
    1 - min_prevalence]."""
    p = np.asarray(prevalence, dtype=np.float64)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"prevalence must be a 1-D array of fractions in [0, 1], got {prevalence!r}")
    if not 0 < min_prevalence <= 0.5:
        raise ValueError(f"min_prevalence={min_prevalence!r}: must be in (0, 0.5]")
    p = np.clip(p, min_prevalence, 1.0 - min_prevalence)
    return (0.5 / p).astype(np.float32), (0.5 / (1.0 - p)).astype(np.float32)


@keras.saving.register_keras_serializable(package="cxr_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with one positive and one negative weight per finding.

    pos_weights, neg_weights: K floats each (see ``prevalence_weights``).
    Per sample: mean over findings of
    ``-(w_pos * y * log(q) + w_neg * (1 - y) * log(1 - q))`` with q the predicted
    probability clipped to [eps, 1 - eps] and y optionally label-smoothed.
    """

    def __init__(self, pos_weights, neg_weights, label_smoothing=0.0, name="weighted_bce",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pos_weights = [float(w) for w in pos_weights]
        self.neg_weights = [float(w) for w in neg_weights]
        if len(self.pos_weights) != len(self.neg_weights):
            raise ValueError(f"{len(self.pos_weights)} positive but {len(self.neg_weights)} negative weights")
        self.label_smoothing = float(label_smoothing)

    def elementwise(self, y_true, y_pred):
        """The (B, K) per-(film, finding) terms (``MaskedLoss`` masks them before averaging)."""
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        eps = keras.config.epsilon()
        q = ops.clip(y_pred, eps, 1.0 - eps)
        w_pos = ops.cast(self.pos_weights, y_pred.dtype)
        w_neg = ops.cast(self.neg_weights, y_pred.dtype)
        return -(w_pos * y_true * ops.log(q) + w_neg * (1.0 - y_true) * ops.log(1.0 - q))

    def call(self, y_true, y_pred):
        return ops.mean(self.elementwise(y_true, y_pred), axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weights": self.pos_weights, "neg_weights": self.neg_weights,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="cxr_tf")
class MaskedLoss(keras.losses.Loss):
    """``loss`` over the known labels only: a label of -1 (``MISSING``) adds nothing.

    The (B, K) element-wise values come from the inner loss itself: Keras' losses average
    over the last axis, so calling its ``call`` on ``y[..., None], p[..., None]`` gives one
    value per (film, finding); a loss whose parameters broadcast on the last axis (the
    per-finding weights of ``WeightedBinaryCrossentropy``) supplies them by an
    ``elementwise(y_true, y_pred)`` method instead. Missing labels are replaced by 0 before
    that call (label smoothing and class balancing see a valid label) and their terms are
    multiplied by 0, so their gradient is exactly 0. ``call`` returns per-film values scaled
    so that Keras' ``sum_over_batch_size`` reduction (the mean over films) yields
    sum(known terms) / count(known terms): with every label known, the mean over all
    B * K terms, i.e. the inner loss's own value; a batch with nothing known gives 0.
    Sample weights (B,) multiply each film's share. Under a multi-replica strategy each
    replica averages its own known terms and Keras averages the replicas.
    """

    def __init__(self, loss, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction != "sum_over_batch_size":
            raise ValueError(f"MaskedLoss reduction={reduction!r}: only 'sum_over_batch_size' is supported "
                             "(its per-film values are scaled for that reduction)")
        if isinstance(loss, dict):
            loss = keras.losses.deserialize(loss)
        if not isinstance(loss, keras.losses.Loss):
            raise TypeError(f"MaskedLoss wraps a keras.losses.Loss instance, got {loss!r}")
        super().__init__(name=name or loss.name, reduction=reduction, dtype=dtype)
        self.loss = loss

    def elementwise(self, y_true, y_pred):
        """(B, K) inner-loss terms, missing labels included (computed as label 0)."""
        if hasattr(self.loss, "elementwise"):
            return self.loss.elementwise(y_true, y_pred)
        return self.loss.call(y_true[..., None], y_pred[..., None])

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.not_equal(y_true, MISSING)
        mask = ops.cast(known, y_pred.dtype)
        terms = self.elementwise(ops.where(known, y_true, 0.0), y_pred) * mask
        batch = ops.cast(ops.shape(y_true)[0], y_pred.dtype)
        return ops.sum(terms, axis=-1) * batch / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss)}


def make_loss(loss_config, prevalence=None):
    """The Keras loss for a ``loss`` block (``{"name", "alpha", "gamma",
    "label_smoothing", "min_prevalence"}``; missing parameters take the values of
    ``pipelines/*.yaml``' focal loss), wrapped in ``MaskedLoss``. ``prevalence`` (K,) is
    required for ``weighted_bce`` (``cxr_tf.data.sources.Sources(records).prevalence("train")``): per
    finding, positives over the films where that finding is known."""
    return MaskedLoss(_unmasked_loss(loss_config, prevalence))


def _unmasked_loss(loss_config, prevalence):
    name = loss_config["name"]
    smoothing = float(loss_config.get("label_smoothing", 0.0))
    if name == "focal":
        return keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=float(loss_config.get("alpha", 0.25)),
            gamma=float(loss_config.get("gamma", 2.0)), label_smoothing=smoothing, name="focal")
    if name == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=smoothing, name="bce")
    if name == "weighted_bce":
        if prevalence is None:
            raise ValueError("loss weighted_bce needs the training-split label prevalence "
                             "(cxr_tf.data.sources.Sources(records).prevalence('train'))")
        if len(prevalence) == 0:
            raise ValueError("prevalence is empty: one value per finding of the records' label set")
        pos, neg = prevalence_weights(prevalence, float(loss_config.get("min_prevalence", 1e-3)))
        return WeightedBinaryCrossentropy(pos, neg, label_smoothing=smoothing)
    raise ValueError(f"loss name {name!r}: allowed values are {', '.join(LOSSES)}")
