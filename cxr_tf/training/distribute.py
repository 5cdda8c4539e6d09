"""Distribution strategies for ``fit``, and the small multi-worker shim for Keras.

``get_strategy(name)``:

=========== ======================================================================
name        strategy
=========== ======================================================================
default     ``tf.distribute.get_strategy()`` (one device)
mirrored    ``MirroredStrategy`` over the local GPUs (over the logical CPU devices
            on a machine without GPUs: one, unless configured otherwise)
multiworker ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``; applies the shim
auto        multiworker when ``TF_CONFIG`` names more than one task, else mirrored
            with more than one GPU, else default
=========== ======================================================================

The shim. Keras 3 ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails upstream
since TF 2.16 (keras-team/keras#20585, tensorflow/tensorflow#72388), in two places of
``keras/src/backend/tensorflow/trainer.py``:

1. ``TensorFlowTrainer._maybe_symbolic_build`` all-reduces the first *input batch*
   across workers to build the model ("Attempt to convert a value (PerReplica…)").
   Fix: build from the first local replica's batch (only its shapes matter).
2. ``reduce_per_replica`` reduces scalar logs with ``axis=0`` ("Invalid reduction
   dimension 0"). Fix: ``axis=None`` for rank-0 values.

``apply_multiworker_shim()`` swaps in the two fixed functions, once, and only
``get_strategy("multiworker")`` calls it. tests/training/test_distribute.py reads the
installed upstream source and fails once either bug is gone, so the shim is removed
when Keras fixes them.

``TF_CONFIG`` is parsed here and nowhere else (``tf_config``, ``num_workers``, ``is_chief``):
the trainer passes the worker count on to the data pipeline.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")

_ORIGINALS = {}
"""Upstream objects replaced by the shim (filled by ``apply_multiworker_shim``)."""


# --------------------------------------------------------------------------- TF_CONFIG
def tf_config():
    """The parsed ``TF_CONFIG`` environment variable ({} when unset).
    ValueError naming the variable when it is not valid JSON."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def num_workers():
    """Number of training tasks (chief + workers) in ``TF_CONFIG``; 1 without it."""
    cluster = tf_config().get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief():
    """Whether this process writes outputs: true without ``TF_CONFIG``, for the task of
    type ``chief``, and for worker 0 when the cluster has no chief task."""
    config = tf_config()
    task = config.get("task", {})
    if not task:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not config.get("cluster", {}).get("chief")


def task_label():
    """``"chief"``, ``"worker-1"``… for this process (``"chief"`` without ``TF_CONFIG``)."""
    task = tf_config().get("task", {})
    if not task or is_chief():
        return "chief"
    return f"{task.get('type')}-{task.get('index', 0)}"


# --------------------------------------------------------------------------- strategies
def resolve_name(name="auto"):
    """The concrete strategy name that ``get_strategy(name)`` uses."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r}: allowed values are {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if num_workers() > 1:
        return "multiworker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def get_strategy(name="auto"):
    """A ``tf.distribute.Strategy`` by name (see the module docstring).

    Create it first thing in a process: ``MultiWorkerMirroredStrategy`` must exist
    before any other TensorFlow op runs."""
    name = resolve_name(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if not tf_config().get("cluster"):
        raise ValueError("strategy=multiworker needs TF_CONFIG with a cluster and this process's task, e.g. "
                         'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}\'')
    apply_multiworker_shim()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multiworker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and num_workers() > 1


def chief_value(strategy, value):
    """The chief's float ``value`` on every worker (one all-reduce across workers);
    ``value`` itself when ``strategy`` is not multi-worker. Exact for integers < 2**53."""
    if not is_multiworker(strategy):
        return value
    first = [True]

    def contribution(_context):
        # One replica per worker contributes: the chief's first local replica.
        own = float(value) if (is_chief() and first[0]) else 0.0
        first[0] = False
        return tf.constant(own, tf.float64)

    per_replica = strategy.experimental_distribute_values_from_function(contribution)
    return float(strategy.reduce("SUM", per_replica, axis=None).numpy())


# --------------------------------------------------------------------------- the shim
def apply_multiworker_shim():
    """Patch Keras' TF trainer for multi-worker ``fit`` (idempotent). Returns True
    if this call patched it."""
    if _ORIGINALS:
        return False
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original_reduce = trainer.reduce_per_replica
    multi_worker = trainer._collective_all_reduce_multi_worker

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                # Fix 1: shapes come from the first local replica's batch; upstream
                # all-reduces the whole input batch across workers.
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def _reduce(v):
            local = strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
            if getattr(getattr(local, "shape", None), "rank", None) == 0:
                # Fix 2: a scalar has no axis 0 to reduce over.
                return strategy.reduce("MEAN", v, axis=None)
            return original_reduce(v, strategy, reduction)

        return tree.map_structure(_reduce, values)

    _ORIGINALS["_maybe_symbolic_build"] = trainer.TensorFlowTrainer._maybe_symbolic_build
    _ORIGINALS["reduce_per_replica"] = original_reduce
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    return True
