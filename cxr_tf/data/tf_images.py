"""The film preparation of ``cxr_tf.data.images`` (``read_image`` + ``to_square``) as
TensorFlow graph ops, for a SavedModel that takes encoded films (``serve_bytes``).

Same pixels as the OpenCV path, bit for bit, in every case measured on the NIH films
(tests/inference/test_export.py checks the predictions):

- decode: PNG (8 and 16 bit) and JPEG (``INTEGER_ACCURATE`` DCT, libjpeg's ISLOW,
  which OpenCV uses);
- grey: OpenCV's fixed-point ``BGR2GRAY`` (Y = (4899 R + 9617 G + 1868 B + 2^13) >> 14),
  alpha composited onto black in float32 and rounded half to even like
  ``_to_grey_uint8``; 16-bit: per-image min-max window to 0..255;
- centre pad with black to a square;
- shrink with OpenCV's ``INTER_AREA``: an exact 2x factor is OpenCV's 2x2 fast path
  (sum + 2) >> 2; any other factor is the separable area-weight matrix in float32
  (weights computed in float64 as OpenCV does, below 1e-3 dropped), rounded half
  to even;
- enlarge (film smaller than the model input; rare): bilinear with half-pixel
  centres. OpenCV's bit-exact fixed-point bilinear is not reproduced here, so a
  pixel may differ by one grey level (docs/deployment.md).
"""

import tensorflow as tf

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _grey8(image):
    """uint8 (H, W, C) with C in 1..4 (TF channel order: RGB[A]) -> uint8 (H, W)."""
    channels = tf.shape(image)[-1]
    x = tf.cast(image, tf.int32)

    def luma():
        y = x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192
        return tf.bitwise.right_shift(y, 14)

    grey = tf.cond(channels >= 3, luma, lambda: x[..., 0])
    alpha = tf.cond(channels == 4, lambda: x[..., 3],
                    lambda: tf.cond(channels == 2, lambda: x[..., 1], lambda: tf.fill(tf.shape(grey), 255)))

    def composite():
        scale = tf.cast(alpha, tf.float32) / 255.0
        return tf.cast(tf.round(tf.cast(grey, tf.float32) * scale), tf.int32)

    grey = tf.cond(tf.reduce_min(alpha) < 255, composite, lambda: grey)
    return tf.cast(grey, tf.uint8)


def _grey16(image):
    """uint16 (H, W, C) -> uint8 (H, W) by a per-image min-max window (first channel;
    16-bit films are greyscale)."""
    x = tf.cast(image[..., 0], tf.float32)
    low, high = tf.reduce_min(x), tf.reduce_max(x)

    def window():
        return tf.cast(tf.round((x - low) * (255.0 / (high - low))), tf.uint8)

    return tf.cond(high > low, window, lambda: tf.zeros(tf.shape(x), tf.uint8))


def decode_film(data):
    """Encoded PNG or JPEG bytes (scalar tf.string) -> uint8 (H, W) greyscale."""
    head = tf.strings.substr(data, 0, 8)
    is_png = tf.equal(head, _PNG_SIGNATURE)
    is_16bit = tf.logical_and(is_png, tf.equal(tf.strings.substr(data, 24, 1), b"\x10"))

    def png16():
        return _grey16(tf.io.decode_png(data, channels=0, dtype=tf.uint16))

    def other():
        return tf.cond(is_png, lambda: _grey8(tf.io.decode_png(data, channels=0)),
                       lambda: _grey8(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")))

    return tf.cond(is_16bit, png16, other)


def _area_weights(side, size):
    """(size, side) float32 area weights of OpenCV's INTER_AREA for side -> size (side > size)."""
    scale = tf.cast(side, tf.float64) / tf.cast(size, tf.float64)
    start = tf.range(size, dtype=tf.float64)[:, None] * scale  # (size, 1) left edge in source px
    end = start + scale
    src = tf.range(side, dtype=tf.float64)[None, :]
    overlap = tf.maximum(tf.minimum(src + 1.0, end) - tf.maximum(src, start), 0.0)
    overlap = tf.where(overlap > 1e-3, overlap, 0.0)  # OpenCV drops slivers below 1e-3 px
    cell = tf.minimum(scale, tf.cast(side, tf.float64) - start)
    return tf.cast(overlap / cell, tf.float32)


def to_square(image, size):
    """uint8 (H, W) -> float32 (size, size) with values 0..255 (integers): centre pad
    to a square, then resize as ``cxr_tf.data.images.to_square``."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = tf.pad(image, [[top, side - height - top], [left, side - width - left]])

    def same():
        return tf.cast(square, tf.float32)

    def halve():  # OpenCV's 2x2 fast path: (a + b + c + d + 2) >> 2
        x = tf.cast(square, tf.int32)[None, :, :, None]
        total = tf.nn.avg_pool2d(tf.cast(x, tf.float32), 2, 2, "VALID") * 4.0
        return tf.floor((total[0, :, :, 0] + 2.0) / 4.0)

    def shrink():
        weights = _area_weights(side, size)
        y = tf.matmul(tf.matmul(weights, tf.cast(square, tf.float32)), weights, transpose_b=True)
        return tf.clip_by_value(tf.round(y), 0.0, 255.0)

    def enlarge():
        y = tf.image.resize(tf.cast(square, tf.float32)[:, :, None], [size, size], method="bilinear")
        return tf.clip_by_value(tf.round(y[:, :, 0]), 0.0, 255.0)

    out = tf.case([(tf.equal(side, size), same), (tf.equal(side, 2 * size), halve), (side > size, shrink)],
                  default=enlarge)
    return tf.ensure_shape(out, [size, size])


def films_to_pixels(batch, size):
    """Encoded films (N,) tf.string -> float32 (N, size, size, 1) model pixels 0..255."""
    pixels = tf.map_fn(lambda data: to_square(decode_film(data), size), batch,
                       fn_output_signature=tf.TensorSpec([size, size], tf.float32))
    return pixels[..., None]
