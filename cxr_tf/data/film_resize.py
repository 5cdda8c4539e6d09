"""A film (uint8 (H, W) greyscale) -> the model's (S, S) input, the way a model's training pipeline
did it. cxr_tf's own models were trained on ``images.to_square`` (pad to a square, area resize,
8-bit); weights imported from PyTorch were trained on their source's pipeline, which differs, and
a network is only as close to its source as its input is (``docs/importing.md``: the measured cost).

``RESIZE_METHODS``:

- ``pad-area``: ``cxr_tf.data.images.to_square`` (every run of ``fit``).
- ``xrv``: torchxrayvision's ``XRayCenterCrop`` + ``XRayResizer`` (scikit-image ``resize``:
  Gaussian anti-aliasing with sigma (factor - 1) / 2, then order-1 ``scipy.ndimage.zoom`` on the
  grid, both with a constant border of the mid-grey 0 of xrv's [-1024, 1024] scale, clipped to the
  film's range), reproduced with SciPy in float (no 8-bit rounding: xrv feeds floats). Equal to
  xrv's tensor up to float32 rounding, without scikit-image.
- ``torchvision``: ``transforms.Resize(S)`` (PIL bilinear with its anti-aliasing, shorter side to
  S, 8-bit) + ``CenterCrop(S)``, as the CheXNet reproductions read films (PIL, no torch).

A run names its method in ``config.json`` ``input.resize`` (absent: ``pad-area``).
"""

import numpy as np

RESIZE_METHODS = ("pad-area", "xrv", "torchvision")
DEFAULT_METHOD = "pad-area"


def centre_crop(image):
    """The centre square of (H, W), as xrv's XRayCenterCrop cuts it."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    return image[top:top + side, left:left + side]


def xrv_resize(image, size):
    """(S, S) float32 0..255: xrv's crop and scikit-image resize, computed in xrv's space (the
    border value is its 0, grey 127.5 here) and mapped back to 0..255."""
    from scipy import ndimage

    square = centre_crop(np.asarray(image))
    x = square.astype(np.float32) / 255.0 * 2048.0 - 1024.0  # xrv.utils.normalize(img, 255)
    factors = np.divide(x.shape, (size, size))
    if np.any(factors > 1):
        x = ndimage.gaussian_filter(x, np.maximum(0, (factors - 1) / 2), cval=0.0, mode="constant")
    out = ndimage.zoom(x, 1 / factors, order=1, mode="grid-constant", cval=0.0, grid_mode=True)
    low, high = square.min() / 255.0 * 2048.0 - 1024.0, square.max() / 255.0 * 2048.0 - 1024.0
    out = np.clip(out, low, high)
    return ((out + 1024.0) * (255.0 / 2048.0)).astype(np.float32)


def torchvision_resize(image, size):
    """(S, S) float32 0..255 (8-bit values): PIL bilinear, shorter side to S, then the centre crop
    (torchvision's ``Resize(S)`` + ``CenterCrop(S)`` on a PIL image)."""
    from PIL import Image

    image = np.asarray(image)
    height, width = image.shape[:2]
    short, long = (height, width) if height <= width else (width, height)
    other = int(size * long / short)
    new_w, new_h = (other, size) if height <= width else (size, other)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return resized[top:top + size, left:left + size].astype(np.float32)


def prepare(image, size, method=DEFAULT_METHOD):
    """(S, S) float32 0..255: a uint8 (H, W) film as ``method`` (``RESIZE_METHODS``) prepares it."""
    if method == "pad-area":
        from cxr_tf.data.images import to_square

        return to_square(image, size).astype(np.float32)
    if method == "xrv":
        return xrv_resize(image, size)
    if method == "torchvision":
        return torchvision_resize(image, size)
    raise ValueError(f"resize method {method!r}: expected one of {', '.join(RESIZE_METHODS)}")
