"""The run's inference SavedModel (``savedmodel/``), for TF Serving and ``TFSMLayer``.

Two endpoints (signatures):

- ``serve`` (also ``serving_default``): ``image`` float32 (N, S, S, 1) raw pixels
  0..255 (multimodal models also ``meta`` float32 (N, 5)) -> ``output_0`` (N, 14).
- ``serve_bytes``: ``image_bytes`` tf.string (N,) encoded PNG or JPEG films of any
  size (multimodal: also ``meta``) -> (N, 14). Decoding, greyscale, square padding
  and resizing run in the graph exactly as ``cxr_tf.predict`` does them
  (``cxr_tf.data.tf_images``), so a serving client sends the file and nothing else.
  The input name ends in ``_bytes``: TF Serving's REST API then accepts
  ``{"b64": "<base64 of the file>"}`` for it (request in docs/deployment.md).
"""

from pathlib import Path

import keras
import tensorflow as tf

from cxr_tf.data.tf_images import films_to_pixels
from cxr_tf.models import META_DIM, model_input_spec


def export_savedmodel(model, path):
    """Write ``model`` (a cxr_tf model, inputs "image" (S, S, 1) [+ "meta"]) as a SavedModel
    with the ``serve`` and ``serve_bytes`` signatures to ``path``. Returns the path."""
    path = Path(path)
    size, multimodal = model_input_spec(model)
    image_spec = tf.TensorSpec((None, size, size, 1), tf.float32, name="image")
    bytes_spec = tf.TensorSpec((None,), tf.string, name="image_bytes")
    meta_spec = tf.TensorSpec((None, META_DIM), tf.float32, name="meta") if multimodal else None

    archive = keras.export.ExportArchive()
    archive.track(model)
    if multimodal:
        archive.add_endpoint("serve", lambda image, meta: model({"image": image, "meta": meta}, training=False),
                             input_signature=[image_spec, meta_spec])
        archive.add_endpoint(
            "serve_bytes",
            lambda image_bytes, meta: model({"image": films_to_pixels(image_bytes, size), "meta": meta},
                                            training=False),
            input_signature=[bytes_spec, meta_spec])
    else:
        archive.add_endpoint("serve", lambda image: model(image, training=False), input_signature=[image_spec])
        archive.add_endpoint("serve_bytes", lambda image_bytes: model(films_to_pixels(image_bytes, size),
                                                                      training=False),
                             input_signature=[bytes_spec])
    archive.write_out(str(path), verbose=False)
    return path
