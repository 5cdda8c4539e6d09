"""Grad-CAM heatmaps per finding, their overlays, and how well they point at the
radiologists' boxes.

    python -m cxr_tf.explain --model RUN_DIR film.png other.dcm ... --out DIR
        [--findings Effusion Mass | --findings all] [--boxes BBox_List_2017.csv.gz]

Grad-CAM (Selvaraju et al. 2017) for finding c: with A the feature map of the
architecture's registered Grad-CAM layer (``cxr_tf.models.ARCHITECTURES[arch]``;
for the fusion network the fused, cross-attended map), the weights are the
spatial mean of d score_c / d A per channel and the map is ReLU(Σ_k w_k A_k),
scaled to 0..1 per film and finding. The score is the finding's logit (the
pre-sigmoid value, as the paper uses the pre-softmax score) when ``predictions``
is a sigmoid Dense layer, so confident findings do not vanish in a saturated
sigmoid; otherwise the probability. The film goes in as raw pixels: the model's
own preprocessing is part of the differentiated graph.

Maps come back on the model's input grid; ``cam_to_film`` undoes the builder's
square padding (``cxr_tf.data.images.to_square``) so a map lies on the original film,
where the NIH boxes (1024 × 1024 coordinates) are measured:

- pointing game: a hit when the map's peak lies inside a box of that finding;
- IoU: the map thresholded at ``iou_threshold`` × its maximum vs the box.

A map that cannot show evidence is named, never drawn as if it did
(``map_status``): *empty* (zero everywhere: no channel's weighted activation
survived the ReLU), *flat* (the same everywhere, within ``FLAT_RANGE`` of its
peak) or *coarse* (a grid under ``MIN_CAM_GRID`` cells a side). The status goes
into the JSON (``describe_map``) and onto the overlay's caption.
"""


import cv2
import keras
import numpy as np
import tensorflow as tf

from cxr_tf.data.images import encode_png
from cxr_tf.data.labels import LABELS

FLAT_RANGE = 0.05
"""A map whose max − min is under this fraction of its peak is flat (shows no place)."""
MAP_NOTES = {
    "empty": "Grad-CAM empty: zero everywhere, no evidence to show",
    "flat": "Grad-CAM flat: the same everywhere, it does not localise",
    "coarse": "Grad-CAM too coarse to localise",
}
IOU_THRESHOLD = 0.5
"""Fraction of the map's maximum above which a pixel counts as 'highlighted' for IoU."""
NIH_BOX_FRAME = 1024
"""The NIH boxes are in pixels of the 1024 × 1024 release films."""


# --------------------------------------------------------------------------- maps

def gradcam_layer_name(model, arch=None):
    """The Grad-CAM layer of ``arch`` for this model's input size
    (``cxr_tf.models.gradcam_layer_for``: the deepest registered map of at least
    ``MIN_CAM_GRID`` × ``MIN_CAM_GRID`` cells).

    Without ``arch``, the architecture whose registered Grad-CAM layer ``model`` has.
    ValueError when the model has no such layer.
    """
    from cxr_tf.models import ARCHITECTURES, gradcam_layer_for

    if arch is not None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
        return gradcam_layer_for(model, arch)
    names = {layer.name for layer in model.layers}
    for name, spec in ARCHITECTURES.items():
        if spec.gradcam_layer in names:
            return gradcam_layer_for(model, name)
    raise ValueError(f"model {model.name!r} has none of the registered Grad-CAM layers "
                     f"{sorted({s.gradcam_layer for s in ARCHITECTURES.values()})}; pass arch= or layer=")


class GradCAM:
    """Grad-CAM for one model.

    ``GradCAM(model, arch=None, layer=None)``; ``cams(images, findings, meta=None)``
    -> ``(maps, probabilities)``: maps float32 (N, F, h, w) in 0..1 on the Grad-CAM
    layer's grid, probabilities float32 (N, K). ``findings``: names (of ``labels``, the run's
    label set) or indices.
    """

    def __init__(self, model, arch=None, layer=None, labels=LABELS):
        self.model = model
        self.labels = tuple(labels)
        self.layer_name = layer or gradcam_layer_name(model, arch)
        feature_map = model.get_layer(self.layer_name).output
        if len(feature_map.shape) != 4:
            raise ValueError(f"Grad-CAM layer {self.layer_name!r} outputs shape {feature_map.shape}; "
                             "need a 4-D (N, h, w, C) feature map")
        predictions = model.get_layer("predictions")
        self._logit_layer = None
        if isinstance(predictions, keras.layers.Dense) and predictions.activation is keras.activations.sigmoid:
            self._logit_layer = predictions
            outputs = [feature_map, predictions.input, model.outputs[0]]
        else:
            outputs = [feature_map, model.outputs[0], model.outputs[0]]
        self.grad_model = keras.Model(model.inputs, outputs, name=f"{model.name}_gradcam")
        self._cams = tf.function(self._compute, reduce_retracing=True)

    def _compute(self, x, indices):
        with tf.GradientTape() as tape:
            fmap, pre, probs = self.grad_model(x, training=False)
            if self._logit_layer is not None:
                layer = self._logit_layer
                scores = tf.matmul(tf.cast(pre, layer.kernel.dtype), layer.kernel)
                if layer.use_bias:
                    scores = scores + layer.bias
            else:
                scores = pre
            scores = tf.gather(tf.cast(scores, tf.float32), indices, axis=1)  # (N, F)
        # each film's score depends only on its own map (inference mode), so one
        # jacobian over the batch gives every film's per-finding gradients
        grads = tape.batch_jacobian(scores, fmap)  # (N, F, h, w, C)
        fmap = tf.cast(fmap, tf.float32)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(2, 3))  # (N, F, C)
        cams = tf.nn.relu(tf.einsum("nfc,nhwc->nfhw", weights, fmap))  # (N, F, h, w)
        peak = tf.reduce_max(cams, axis=(2, 3), keepdims=True)
        cams = tf.math.divide_no_nan(cams, peak)
        return cams, tf.cast(probs, tf.float32)

    def cams(self, images, findings=None, meta=None, batch_size=16):
        from cxr_tf.inference.uncertainty import batch_inputs

        findings = self.labels if findings is None else findings
        indices = tf.constant([label_index(f, self.labels) for f in findings], tf.int32)
        x = batch_inputs(self.model, images, meta)
        n = len(x["image"]) if isinstance(x, dict) else len(x)
        maps, probs = [], []
        for start in range(0, n, batch_size):
            chunk = ({k: v[start:start + batch_size] for k, v in x.items()} if isinstance(x, dict)
                     else x[start:start + batch_size])
            cam, prob = self._cams(chunk, indices)
            maps.append(cam.numpy())
            probs.append(prob.numpy())
        return np.concatenate(maps), np.concatenate(probs)


def gradcam(model, images, findings=None, meta=None, arch=None, layer=None, labels=LABELS):
    """Grad-CAM maps (N, F, h, w) in 0..1 and probabilities (N, K); see ``GradCAM``."""
    return GradCAM(model, arch=arch, layer=layer, labels=labels).cams(images, findings, meta)


def map_status(cam):
    """"ok", "empty", "flat" or "coarse" for one map (h, w) in 0..1 on its layer grid
    (the first that applies, in that order; see the module docstring)."""
    from cxr_tf.models import MIN_CAM_GRID

    cam = np.asarray(cam, np.float32)
    peak = float(cam.max()) if cam.size else 0.0
    if not peak > 0:
        return "empty"
    if peak - float(cam.min()) < FLAT_RANGE * peak:
        return "flat"
    if min(cam.shape[:2]) < MIN_CAM_GRID:
        return "coarse"
    return "ok"


def describe_map(cam, layer):
    """JSON-ready {"status", "grid": [h, w], "layer", "note"} of one map (``map_status``;
    ``note`` is None for an ok map, else the sentence the caption shows)."""
    status = map_status(cam)
    h, w = np.asarray(cam).shape[:2]
    note = MAP_NOTES.get(status)
    if status == "coarse":
        note = f"{note} ({h}x{w} cells)"
    return {"status": status, "grid": [int(h), int(w)], "layer": layer, "note": note}


def label_index(finding, labels=LABELS):
    """The output index of ``finding`` (a name in ``labels`` or an index); ValueError otherwise."""
    if isinstance(finding, (int, np.integer)):
        if not 0 <= finding < len(labels):
            raise ValueError(f"finding index {finding} out of range 0..{len(labels) - 1}")
        return int(finding)
    if finding not in labels:
        raise ValueError(f"unknown finding {finding!r}; choose from {list(labels)}")
    return list(labels).index(finding)


def cam_to_film(cam, film_shape):
    """A map on the model's square input grid -> the original (H, W) film, float32 0..1.

    Undoes ``cxr_tf.data.images.to_square``: the square is the film centre-padded to
    max(H, W), so the map is resized to that square and the padding cut away.
    """
    height, width = film_shape[:2]
    side = max(height, width)
    square = cv2.resize(np.asarray(cam, np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    top, left = (side - height) // 2, (side - width) // 2
    return np.clip(square[top:top + height, left:left + width], 0.0, 1.0)


def overlay(film, cam, alpha=0.5, colormap=cv2.COLORMAP_TURBO):
    """The film with the heatmap blended in: uint8 (H, W, 3) BGR.

    film: uint8 (H, W) greyscale; cam: float (H, W) 0..1 on the same grid. Each
    pixel mixes in the colour map in proportion to ``alpha`` × its map value, so
    areas the model ignores show the plain film and the anatomy stays readable.
    """
    film = np.asarray(film, np.uint8)
    cam = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
    if cam.shape != film.shape[:2]:
        raise ValueError(f"map shape {cam.shape} differs from film shape {film.shape[:2]}: use cam_to_film")
    colour = cv2.applyColorMap(np.rint(cam * 255).astype(np.uint8), colormap).astype(np.float32)
    grey = cv2.cvtColor(film, cv2.COLOR_GRAY2BGR).astype(np.float32)
    weight = (alpha * cam)[..., None]
    return np.clip(np.rint(grey * (1 - weight) + colour * weight), 0, 255).astype(np.uint8)


def caption(image, text):
    """``image`` (uint8 BGR) with ``text`` written in its top-left corner (a copy); each
    line of ``text`` on its own row."""
    image = image.copy()
    scale = max(image.shape[1] / 1024, 0.35)
    thickness = max(1, int(2 * scale))
    step = int(34 * scale) + 6
    for row, line in enumerate(text.split("\n")):
        org = (int(10 * scale) + 2, step * (row + 1))
        cv2.putText(image, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(image, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def overlay_png(film, cam, text=None, max_side=None, boxes=()):
    """PNG bytes of the overlay (``overlay``), with ``boxes`` ((x, y, w, h) in film
    pixels, e.g. the radiologists') outlined in white, captioned with ``text``, shrunk
    so its longest side is at most ``max_side`` (for web pages)."""
    image = overlay(film, cam)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for x, y, w, h in boxes:
        cv2.rectangle(image, (round(x), round(y)), (round(x + w), round(y + h)), (255, 255, 255), thickness)
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if text:
        image = caption(image, text)
    return encode_png(image)


# --------------------------------------------------------------------------- boxes

def read_boxes(path):
    """The NIH box table as a DataFrame (``image_index``, ``label``, ``x``, ``y``,
    ``w``, ``h`` in 1024 × 1024 pixels); ``Infiltrate`` is spelled ``Infiltration``.
    One reader for the package: ``cxr_tf.data.datasets.nih.read_bbox_table``."""
    from cxr_tf.data.datasets.nih import read_bbox_table

    return read_bbox_table(path)


def scale_box(box, film_shape, frame=NIH_BOX_FRAME):
    """A (x, y, w, h) box given in a ``frame`` × ``frame`` film, in pixels of a film of ``film_shape``."""
    height, width = film_shape[:2]
    sx, sy = width / frame, height / frame
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)


def pointing_hit(cam, box):
    """True when the peak of ``cam`` (H, W) lies inside ``box`` (x, y, w, h) in the
    same pixels. A flat zero map (no evidence at all) is a miss."""
    cam = np.asarray(cam)
    if not np.any(cam > 0):
        return False
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    x, y, w, h = box
    return bool(x <= col + 0.5 <= x + w and y <= row + 0.5 <= y + h)


def box_mask(box, shape):
    """Boolean (H, W) mask of pixels whose centre lies inside ``box`` (x, y, w, h)."""
    height, width = shape[:2]
    x, y, w, h = box
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    return ((rows >= y) & (rows <= y + h))[:, None] & ((cols >= x) & (cols <= x + w))[None, :]


def box_iou(cam, box, threshold=IOU_THRESHOLD):
    """IoU between the map thresholded at ``threshold`` × its maximum and ``box``."""
    cam = np.asarray(cam)
    peak = cam.max()
    highlighted = cam >= threshold * peak if peak > 0 else np.zeros(cam.shape, bool)
    target = box_mask(box, cam.shape)
    union = np.logical_or(highlighted, target).sum()
    return float(np.logical_and(highlighted, target).sum() / union) if union else 0.0


def localisation_summary(rows):
    """Per finding {"n", "hit_rate", "mean_iou"} (plus "all") from rows of dicts with
    keys ``finding``, ``hit`` (bool) and ``iou`` (float)."""
    summary = {}
    groups = {}
    for row in rows:
        groups.setdefault(row["finding"], []).append(row)
    groups = {f: groups[f] for f in sorted(groups, key=lambda f: (f not in LABELS, LABELS.index(f) if f in LABELS else 0, f))}
    if rows:
        groups["all"] = list(rows)
    for name, items in groups.items():
        summary[name] = {"n": len(items),
                         "hit_rate": float(np.mean([r["hit"] for r in items])),
                         "mean_iou": float(np.mean([r["iou"] for r in items]))}
    return summary


def localise(cams, boxes, findings, threshold=IOU_THRESHOLD):
    """Rows {"film", "finding", "hit", "iou"} for maps and boxes on the same grid.

    cams: (N, F, H, W); boxes: per film a {finding: [(x, y, w, h), ...]} dict (a film
    may have several boxes of a finding: a hit is a peak in any, IoU is the best);
    findings: the F finding names of the maps' second axis. Findings without a box
    on a film are skipped.
    """
    rows = []
    for i, film_boxes in enumerate(boxes):
        for j, finding in enumerate(findings):
            for_finding = film_boxes.get(finding, [])
            if not for_finding:
                continue
            cam = cams[i][j]
            rows.append({"film": i, "finding": finding,
                         "hit": any(pointing_hit(cam, b) for b in for_finding),
                         "iou": max(box_iou(cam, b, threshold) for b in for_finding)})
    return rows
