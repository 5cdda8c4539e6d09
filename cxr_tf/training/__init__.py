"""Training: configs (``pipelines/``), losses, callbacks, tf.distribute, and the trainer that
writes a run folder (``cxr_tf.runs``)."""


def train(config, run_name=None, resume=True):
    """Train one run and return its folder; see ``cxr_tf.training.trainer.train``."""
    from cxr_tf.training.trainer import train as _train

    return _train(config, run_name=run_name, resume=resume)
