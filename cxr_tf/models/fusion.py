"""The Dense–Efficient attention-fusion network (the fusion study, docs/references.md).

DenseNet121 and EfficientNetB3 run in parallel on the same film; each is cut at
an intermediate tap, the last feature map at stride 16 (14×14 at 224 px):

- DenseNet121 ``pool4_conv`` (512 ch): the transition-3 1×1 conv after dense block
  3, the richest stride-16 map before the 2×2 average pool that halves it.
- EfficientNetB3 ``block6a_expand_activation`` (816 ch): the expanded output of
  stage 5 (blocks 5a–5e) just before block 6a's stride-2 depthwise conv, i.e.
  the last and deepest stride-16 activation of EfficientNetB3.

Cutting both at stride 16 keeps a 14×14 grid for attention (196 tokens, finer
than the 7×7 stride-32 maps, which matters for small findings such as nodules)
and drops the heaviest tail of both backbones, which brings the total parameter
count close to the study's 10.6 M. Each tap is projected to 256 channels (1×1
conv), resized to the DenseNet grid when the grids differ, flattened to tokens,
and each stream attends to the other (multi-head attention, residual,
LayerNorm). The two attended streams are concatenated ("fusion_map", the
Grad-CAM layer), pooled ("features"), then dropout 0.5 and Dense sigmoid.
"""

import keras
from keras import layers

from cxr_tf.models.layers import preprocess, cross_attention
from cxr_tf.models.heads import application_weights, classification_head, image_input, load_weights_file

DENSENET_TAP = "pool4_conv"
EFFICIENTNET_TAP = "block6a_expand_activation"
FUSION_CHANNELS = 256


def build_fusion(image_size=224, num_labels=14, weights=None, dropout=0.5, mc_dropout=False,
                 num_heads=8, key_dim=32, head_units=0):
    """DenseNet121 ⊕ EfficientNetB3 cross-attention fusion; ``weights="imagenet"``
    loads ImageNet weights into both backbones. Needs image_size >= 32."""
    if image_size < 32:
        raise ValueError(f"fusion: image_size={image_size} is too small, the stride-16 taps need >= 32 px")
    image = image_input(image_size)
    backbone_weights = application_weights(weights)

    x = preprocess(image, "torch", name="preprocess_densenet121")
    dense = keras.applications.DenseNet121(include_top=False, weights=backbone_weights, input_tensor=x,
                                           input_shape=(image_size, image_size, 3))
    d = dense.get_layer(DENSENET_TAP).output                       # (B, S/16, S/16, 512)
    y = preprocess(image, "raw", name="preprocess_efficientnetb3")
    eff = keras.applications.EfficientNetB3(include_top=False, weights=backbone_weights, input_tensor=y,
                                            input_shape=(image_size, image_size, 3))
    e = eff.get_layer(EFFICIENTNET_TAP).output                     # (B, ~S/16, ~S/16, 816)

    d = layers.Conv2D(FUSION_CHANNELS, 1, name="fusion_proj_densenet")(d)       # (B, h, w, 256)
    e = layers.Conv2D(FUSION_CHANNELS, 1, name="fusion_proj_efficientnet")(e)
    h, w = d.shape[1], d.shape[2]
    if tuple(e.shape[1:3]) != (h, w):
        e = layers.Resizing(h, w, interpolation="bilinear", name="fusion_resize_efficientnet")(e)
    d_tokens = layers.Reshape((h * w, FUSION_CHANNELS), name="fusion_tokens_densenet")(d)  # (B, h*w, 256)
    e_tokens = layers.Reshape((h * w, FUSION_CHANNELS), name="fusion_tokens_efficientnet")(e)
    d_att = cross_attention(d_tokens, e_tokens, num_heads, key_dim, name="fusion_densenet_attends")
    e_att = cross_attention(e_tokens, d_tokens, num_heads, key_dim, name="fusion_efficientnet_attends")
    fused = layers.Concatenate(name="fusion_concat")([d_att, e_att])             # (B, h*w, 512)
    fmap = layers.Reshape((h, w, 2 * FUSION_CHANNELS), name="fusion_map")(fused)  # (B, h, w, 512)
    features = layers.GlobalAveragePooling2D(name="features")(fmap)
    outputs = classification_head(features, num_labels, dropout, mc_dropout, hidden=head_units)
    return load_weights_file(keras.Model(image, outputs, name="fusion"), weights)
