"""The training progress bar's ``auc``: macro ROC AUC over the findings that have both
a positive and a negative film, as ``metrics.json``, the fit summary and the
evaluation report compute it (``cxr_tf.training.trainer.auc_summary``,
``cxr_tf.evaluation.metrics.summarize``).

Keras' ``AUC(multi_label=True)`` averages over every label, and a label without
positives in the split scores 0 there (its recall is 0/0, taken as 0): on a small
validation split with a rare finding missing, the bar showed ``val_auc 0.4669``
while the summary said ``val macro AUC 0.4849``. ``MacroAUC`` leaves such labels
out. It keeps Keras' thresholded approximation (``num_thresholds`` evenly spaced
bins, interpolated), with 100 000 bins: a barely trained model's probabilities sit
within a few hundredths of each other, and at Keras' 200 (or 1000) bins many films
share a bin. Measured on a 2-epoch simple_cnn (16 validation films, probabilities
0.455-0.492): exact 0.6147; 200 bins 0.5468, 1 000 bins 0.6289, 10 000 bins 0.6179,
100 000 bins 0.6147. Keras bins evenly spaced thresholds by index (no per-threshold
comparison), so the cost is a segment sum into the bins per batch; the four
confusion-count variables hold 4 × 100 000 × 14 floats (22 MB).

Missing labels (-1, ``cxr_tf.data.datasets.base.MISSING``) are masked: ``update_state``
passes the known-label mask to Keras as per-element sample weights (Keras' multi-label
confusion counts weigh each (film, label) element; ``metrics_utils``), so a missing label
counts neither as positive nor as negative, and each finding's AUC is over its known films.
"""

import keras
from keras import ops

from cxr_tf.data.datasets.base import MISSING
from cxr_tf.data.labels import NUM_LABELS

DEFAULT_THRESHOLDS = 100_000


@keras.saving.register_keras_serializable(package="cxr_tf")
class MacroAUC(keras.metrics.AUC):
    """Multi-label ROC AUC, the mean over labels with at least one known positive and one
    known negative example seen (the others are left out, not counted as 0); missing labels
    (-1) are left out of every count."""

    def __init__(self, num_labels=NUM_LABELS, num_thresholds=DEFAULT_THRESHOLDS, name="auc", **kwargs):
        kwargs.pop("multi_label", None)
        kwargs.pop("curve", None)
        super().__init__(num_thresholds=num_thresholds, curve="ROC", multi_label=True, num_labels=num_labels,
                         name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Keras' update with the missing labels weighted 0 (and given 0, not -1, as label).
        ``sample_weight``: None, a scalar, one weight per film (B,) or per element (B, K)."""
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = ops.cast(y_true, self.dtype)
        known = ops.not_equal(y_true, MISSING)
        weight = ops.cast(known, self.dtype)
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, self.dtype)
            if len(sample_weight.shape) == 1:
                sample_weight = ops.expand_dims(sample_weight, -1)  # per film: broadcast over labels
            weight = ops.multiply(weight, sample_weight)
        super().update_state(ops.where(known, y_true, 0.0), y_pred, sample_weight=weight)

    def result(self):
        tp, fp, tn, fn = self.true_positives, self.false_positives, self.true_negatives, self.false_negatives
        recall = ops.divide_no_nan(tp, ops.add(tp, fn))  # (thresholds, labels)
        fp_rate = ops.divide_no_nan(fp, ops.add(fp, tn))
        heights = ops.divide(ops.add(recall[:-1], recall[1:]), 2.0)  # trapezoids, as Keras interpolates
        by_label = ops.sum(ops.multiply(ops.subtract(fp_rate[:-1], fp_rate[1:]), heights), axis=0)
        # at the lowest threshold every film is called positive: tp + fn = positives, fp + tn = negatives
        defined = ops.logical_and(ops.greater(ops.add(tp[0], fn[0]), 0), ops.greater(ops.add(fp[0], tn[0]), 0))
        defined = ops.cast(defined, by_label.dtype)
        return ops.divide_no_nan(ops.sum(ops.multiply(by_label, defined)), ops.sum(defined))
