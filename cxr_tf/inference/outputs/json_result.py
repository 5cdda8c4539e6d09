"""``json``: the ``predict --json`` object of one film (``FilmResult.as_dict``), as a file
``<stem>.json`` and as the service's default answer."""

from cxr_tf.inference.outputs import Output


def write(result, predictor):
    return [Output(".json", result.as_dict())]


def answer(result, predictor):
    return result.as_dict()
