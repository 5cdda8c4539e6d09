"""The Dense–Efficient attention-fusion network (../shared/seeds/003).

DenseNet121 and EfficientNetB3 run side by side on the same film. Each is tapped
at stride 16, not at its last layer:

- DenseNet121 ``pool4_relu``: the end of dense block 3 (1024 channels, 14×14 at 224 px);
- EfficientNetB3 ``block6a_expand_activation``: the end of stage 5 (816 channels, 14×14).

Stride 16 keeps four times as many positions as the final 7×7 maps, so the
cross-attention has a spatial grid to work with (findings such as nodules are
small), and both maps come from the same depth of abstraction (mid-to-high level
features before the last, most ImageNet-specific stage); it also drops the last
stages' weights, which brings the network near the study's size. Both maps are
projected to 256 channels with 1×1 convolutions and resized to DenseNet's grid
(they already agree when the size is a multiple of 16). Cross-attention: each
stream attends to the other (multi-head, residual, layer normalisation); the two
refined streams are concatenated into the fused map (``fused_map``, the Grad-CAM
layer), pooled (``features``), dropped out (0.5) and classified by 14 sigmoids.
"""

import keras

from cxr_tf.layers import BackboneInput
from cxr_tf.models.common import dropout_layer, image_input, predictions
from cxr_tf.models.registry import register

DENSENET_TAP = "pool4_relu"
EFFICIENTNET_TAP = "block6a_expand_activation"
CHANNELS = 256


def _cross_attend(query, context, name, heads, dropout):
    """LayerNorm(query + MultiHeadAttention(query ← context)); sequences (B, N, C)."""
    attended = keras.layers.MultiHeadAttention(heads, CHANNELS // heads, dropout=dropout, name=f"{name}_mha")(
        query, context
    )
    return keras.layers.LayerNormalization(name=f"{name}_norm")(keras.layers.Add(name=f"{name}_add")([query, attended]))


@register("fusion", default_size=224, gradcam_layer="fused_map",
          backbone_outputs=(DENSENET_TAP, EFFICIENTNET_TAP))
def fusion(image_size, num_labels, weights, dropout, mc_dropout, heads=8, attention_dropout=0.0):
    image = image_input(image_size)
    dense_in = BackboneInput("torch", name="to_densenet")(image)
    efficient_in = BackboneInput("raw", name="to_efficientnet")(image)
    dense = keras.applications.DenseNet121(include_top=False, weights=weights, input_tensor=dense_in)
    efficient = keras.applications.EfficientNetB3(include_top=False, weights=weights, input_tensor=efficient_in)
    a = dense.get_layer(DENSENET_TAP).output  # (B, h, w, 1024)
    b = efficient.get_layer(EFFICIENTNET_TAP).output  # (B, h', w', 816)
    a = keras.layers.Conv2D(CHANNELS, 1, name="densenet_proj")(a)
    b = keras.layers.Conv2D(CHANNELS, 1, name="efficientnet_proj")(b)
    h, w = a.shape[1], a.shape[2]
    if tuple(b.shape[1:3]) != (h, w):
        b = keras.layers.Resizing(h, w, interpolation="bilinear", name="efficientnet_resize")(b)
    a_seq = keras.layers.Reshape((h * w, CHANNELS), name="densenet_tokens")(a)  # (B, N, 256)
    b_seq = keras.layers.Reshape((h * w, CHANNELS), name="efficientnet_tokens")(b)
    a_ref = _cross_attend(a_seq, b_seq, "densenet_attends", heads, attention_dropout)
    b_ref = _cross_attend(b_seq, a_seq, "efficientnet_attends", heads, attention_dropout)
    fused = keras.layers.Concatenate(name="fused_tokens")([a_ref, b_ref])  # (B, N, 512)
    fused_map = keras.layers.Reshape((h, w, 2 * CHANNELS), name="fused_map")(fused)
    features = keras.layers.GlobalAveragePooling2D(name="features")(fused_map)
    x = dropout_layer(dropout, mc_dropout, "head_dropout")(features)
    return keras.Model(image, predictions(x, num_labels), name="fusion")
