"""The custom CNN: a small network for chest films, sized for training on a 2-core CPU.

Contract with `export.py`: the model takes float pixel values 0..255 shaped [N, S, S, 1]
(normalisation is inside), returns 3 logits (normal, bacterial, viral) and has a layer named
`gradcam_target` whose output is the last convolutional feature map.
"""

from __future__ import annotations

import keras
from keras import layers

CLASS_NAMES = ("normal", "bacterial", "viral")
GRADCAM_LAYER = "gradcam_target"


def _conv_block(x, filters: int, name: str, *, pool: bool = True):
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def build_cnn(image_size: int = 224, width: int = 16, dropout: float = 0.3, seed: int = 0) -> keras.Model:
    """A stride-2 stem, early pooling, then separable-conv blocks; 3 logits out."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = layers.Conv2D(width, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D(2, name="stem_pool")(x)  # S/4
    x = _conv_block(x, width * 2, "block1")  # S/8
    x = _conv_block(x, width * 4, "block2")  # S/16
    x = _conv_block(x, width * 8, "block3", pool=False)
    x = layers.Activation("linear", name=GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(len(CLASS_NAMES), name="logits")(x)
    return keras.Model(inputs, logits, name="cxr_cnn")
