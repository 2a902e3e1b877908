"""The networks: the custom CNN (a small residual separable-conv network for chest films, sized for
a 2-core CPU) and EfficientNet-Lite0 started from ImageNet weights (`pretrained.py`).

Contract with `export.py`, both backbones: the model takes float pixel values 0..255 shaped
[N, S, S, 1] (normalisation is inside), returns 3 logits (normal, bacterial, viral) and has a layer
named `gradcam_target` whose output is the last convolutional feature map; `gradcam_layer` names
the map the export explains with. `build_network` picks the backbone by name (`BACKBONES`); the
name travels in the export's model_info.

Cost: the stem is a stride-2 convolution followed by max pooling, so nothing after the first layer
runs above S/4 (56 x 56 for 224 inputs); the stages are depthwise-separable convolutions with a
residual shortcut, BatchNorm and ReLU. Each image is standardised to zero mean and unit variance
inside the graph, which removes global brightness and contrast differences between machines and
periods before the first convolution.

BatchNorm momentum is lower than Keras's default (`BN_MOMENTUM`) because an epoch has few steps:
with the default, the moving statistics used at inference lag the weights, and a model scores far
worse in inference mode than in training on the same images.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from services.trainer.modeling.config import BACKBONES, CUSTOM, EFFICIENTNET_LITE0
from services.trainer.modeling.pretrained import (
    STRIDE16_LAYER,
    efficientnet_lite0_features,
    fold_batch_norms,
    load_imagenet_weights,
    normalize,
)
from shared.contract import CLASS_NAMES

GRADCAM_LAYER = "gradcam_target"
INTERNAL_RESIZE = "internal_resize"
# The fewest cells a side of the Grad-CAM map may have: with fewer, each cell spans a lung zone and
# the film's border together, and the upsampled heatmap cannot tell them apart.
GRADCAM_MIN_SIDE = 7


@keras.saving.register_keras_serializable(package="cxr")
class PerImageStandardization(layers.Layer):
    """(x - mean) / std over each image's pixels; std is floored so a flat image gives zeros."""

    def __init__(self, epsilon: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        std = ops.std(inputs, axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / ops.maximum(std, self.epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="cxr")
class HistogramEqualization(layers.Layer):
    """Global histogram equalisation of each image's 256 grey levels, output 0..255.

    Each pixel becomes (cdf(level) - cdf(darkest level)) / (pixels - cdf(darkest level)) * 255,
    cdf counting the image's pixels at or below a level (inputs are rounded and clipped to
    0..255). Every increasing grey-level mapping (brightness, contrast, gamma, a machine's look-up
    table) gives the same output, so films from another period or machine reach the network with
    the same grey-level distribution. A flat image gives zeros. No gradient flows to the input.
    """

    def call(self, inputs):
        levels = tf.cast(tf.clip_by_value(tf.round(inputs), 0.0, 255.0), tf.int32)
        flat = tf.reshape(levels, [tf.shape(inputs)[0], -1])
        counts = tf.math.bincount(flat, minlength=256, maxlength=256, axis=-1)
        cdf = tf.cast(tf.cumsum(counts, axis=-1), tf.float32)
        darkest = tf.reduce_min(tf.where(counts > 0, cdf, tf.float32.max), axis=-1, keepdims=True)
        pixels = tf.cast(tf.shape(flat)[1], tf.float32)
        mapped = tf.gather(cdf, flat, batch_dims=1)
        out = tf.math.divide_no_nan(mapped - darkest, pixels - darkest) * 255.0
        return tf.reshape(out, tf.shape(inputs))


@keras.saving.register_keras_serializable(package="cxr")
class GreyToImageNetRgb(layers.Layer):
    """Grey 0..255 [N, S, S, 1] -> the three identical channels an ImageNet network expects."""

    def call(self, inputs):
        return normalize(ops.concatenate([inputs, inputs, inputs], axis=-1))


BN_MOMENTUM = 0.9


def _batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def _separable(x, filters: int, name: str, activate: bool = True):
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
    x = _batch_norm(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if activate else x


def _stage(x, filters: int, name: str, *, pool: bool):
    """Two separable convolutions with a 1x1-projected shortcut, then optional 2x2 max pooling."""
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
    shortcut = _batch_norm(f"{name}_proj_bn")(shortcut)
    x = _separable(x, filters, f"{name}_a")
    x = _separable(x, filters, f"{name}_b", activate=False)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = layers.Activation("relu", name=f"{name}_out")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x) if pool else x


def build_cnn(image_size: int = 224, width: int = 16, dropout: float = 0.3, seed: int = 0,
              stages: int = 3, equalize: bool = False) -> keras.Model:
    """Stem (stride-2 conv + pool, S/4) then `stages` residual stages of width 2w, 4w, 8w...

    `equalize` puts `HistogramEqualization` before the standardisation. The last stage does not
    pool: its output (S/16 for 3 stages) is the Grad-CAM feature map.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = HistogramEqualization(name="equalize")(inputs) if equalize else inputs
    x = PerImageStandardization(name="standardize")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _batch_norm("stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for index in range(stages):
        x = _stage(x, width * 2 ** (index + 1), f"stage{index + 1}", pool=index < stages - 1)
    x = layers.Activation("linear", name=GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(len(CLASS_NAMES), name="logits")(x)
    return keras.Model(inputs, logits, name="cxr_cnn")


def build_pretrained(image_size: int = 224, dropout: float = 0.3, seed: int = 0,
                     equalize: bool = False, imagenet: bool = True,
                     frozen_blocks: int = 0, folded: bool = False,
                     internal_size: int | None = None) -> keras.Model:
    """EfficientNet-Lite0 with ImageNet weights (`imagenet=False`: the same graph, untrained, for
    rebuilding an export), a dropout and a 3-class head on its pooled 1280-channel map.

    Its BatchNorm layers stay in inference mode (their ImageNet statistics are kept: small
    batches of grey films would give noisy estimates); `frozen_blocks` more leaves the stem and the
    first blocks untrained, which also spares their backward pass. `folded`: the serving form, each
    BatchNorm folded into its convolution (`serving_form` fills it), never trained.
    `internal_size`: a larger film is shrunk to this many pixels inside the network (area
    averaging) before the backbone; the input stays `image_size` (the serving contract).
    """
    model, sources = _efficientnet_lite0(image_size, dropout, seed, equalize, folded,
                                         internal_size)
    if folded:
        return model
    if imagenet:
        load_imagenet_weights(model, sources)
    frozen_prefixes = ("effl0_conv_stem", "effl0_bn0") + tuple(
        f"effl0_blocks_{index}_" for index in range(frozen_blocks))
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) or (
                frozen_blocks and layer.name.startswith(frozen_prefixes)):
            layer.trainable = False
    return model


def _efficientnet_lite0(image_size: int, dropout: float, seed: int, equalize: bool,
                        folded: bool, internal_size: int | None) -> tuple[keras.Model, list]:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = HistogramEqualization(name="equalize")(inputs) if equalize else inputs
    if internal_size and internal_size < image_size:
        x = layers.Resizing(internal_size, internal_size, interpolation="area",
                            name=INTERNAL_RESIZE)(x)
    x = GreyToImageNetRgb(name="grey_to_rgb")(x)
    x, sources = efficientnet_lite0_features(x, folded=folded)
    x = layers.Activation("linear", name=GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if not folded:  # the serving form is never trained: no dropout, no seed to save
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(len(CLASS_NAMES), name="logits")(x)
    return keras.Model(inputs, logits, name="cxr_efficientnet_lite0"), sources


def gradcam_layer(model: keras.Model) -> str:
    """The layer whose map Grad-CAM weighs: the last map (`GRADCAM_LAYER`), unless it has fewer
    than `GRADCAM_MIN_SIDE` cells a side (an EfficientNet-Lite0 on films shrunk inside the
    network: 5 x 5 at 160 pixels) and the network has a finer one, its map at S/16."""
    names = {layer.name for layer in model.layers}
    side = model.get_layer(GRADCAM_LAYER).output.shape[1]
    if side is not None and side < GRADCAM_MIN_SIDE and STRIDE16_LAYER in names:
        return STRIDE16_LAYER
    return GRADCAM_LAYER


def is_folded(model: keras.Model) -> bool:
    """Whether `model` is an EfficientNet-Lite0 already in its serving form."""
    return model.name == "cxr_efficientnet_lite0" and not any(
        isinstance(layer, layers.BatchNormalization) for layer in model.layers)


def serving_form(model: keras.Model) -> keras.Model:
    """The network the export serves: an EfficientNet-Lite0 with its BatchNorms folded into its
    convolutions (the same outputs: its BatchNorms run in inference mode); any other network,
    or one already folded, as it is."""
    if model.name != "cxr_efficientnet_lite0" or is_folded(model):
        return model
    layer_names = {layer.name for layer in model.layers}
    internal = (int(model.get_layer(INTERNAL_RESIZE).output.shape[1])
                if INTERNAL_RESIZE in layer_names else None)
    folded, sources = _efficientnet_lite0(
        int(model.inputs[0].shape[1]), dropout=0.0, seed=0,
        equalize="equalize" in layer_names, folded=True, internal_size=internal)
    fold_batch_norms(folded, model, sources)
    return folded


def architecture_info(params) -> dict:
    """What an export must record to rebuild its networks (`reexport`): from a run's params."""
    internal = params.get("internal_size")
    return {"backbone": str(params.get("backbone") or CUSTOM),
            "equalize": bool(params.get("equalize")),
            "internal_size": int(internal) if internal not in (None, "", "None") else None}


def build_network(backbone: str = CUSTOM, *, image_size: int = 224, width: int = 16,
                  dropout: float = 0.3, seed: int = 0, equalize: bool = False,
                  imagenet: bool = True, frozen_blocks: int = 0,
                  folded: bool = False, internal_size: int | None = None) -> keras.Model:
    """The network of a recipe, by backbone name (`folded`: an EfficientNet-Lite0's serving
    form)."""
    if backbone == CUSTOM:
        return build_cnn(image_size=image_size, width=width, dropout=dropout, seed=seed,
                         equalize=equalize)
    if backbone == EFFICIENTNET_LITE0:
        return build_pretrained(image_size=image_size, dropout=dropout, seed=seed,
                                equalize=equalize, imagenet=imagenet, frozen_blocks=frozen_blocks,
                                folded=folded, internal_size=internal_size)
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
