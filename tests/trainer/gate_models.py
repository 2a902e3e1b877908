"""SavedModels of known quality for gate tests, exported by the real export code.

A linear read-out of 8x8-pooled pixels, fitted with scikit-learn on the sample images: the
"informative" model separates them; its mirror image ranks every image the wrong way round, and a
seeded random read-out ranks them by chance. All three take the export contract's input (float
pixels 0..255) and carry a `gradcam_target` feature map.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from keras import layers
from sklearn.linear_model import LogisticRegression

from services.trainer.artifact.export import export_for_serving
from services.trainer.modeling.model import GRADCAM_LAYER

POOL = 8


def _readout_model(weights: np.ndarray, bias: float, image_size: int = 224) -> keras.Model:
    """logits (0, z - ln 2, z - ln 2) with z = w.x + b, so p(pneumonia) = sigmoid(z) exactly."""
    inputs = keras.Input((image_size, image_size, 1))
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.AveragePooling2D(POOL)(x)
    # A 1x1 identity convolution as the feature map: a linear Activation right after pooling
    # gives Grad-CAM no gradient path in the exported graph.
    feature_map = layers.Conv2D(1, 1, use_bias=False, name=GRADCAM_LAYER)
    x = layers.Flatten()(feature_map(x))
    dense = layers.Dense(3, name="logits")
    model = keras.Model(inputs, dense(x))
    feature_map.set_weights([np.ones((1, 1, 1, 1), dtype=np.float32)])
    kernel = np.zeros((weights.size, 3), dtype=np.float32)
    kernel[:, 1] = kernel[:, 2] = weights
    shift = bias - math.log(2.0)
    dense.set_weights([kernel, np.array([0.0, shift, shift], dtype=np.float32)])
    return model


def pooled_features(images: np.ndarray) -> np.ndarray:
    """The read-out's input features, computed by the same Keras layers."""
    model = _readout_model(np.zeros((224 // POOL) ** 2), 0.0)
    flatten = keras.Model(model.inputs, model.get_layer(index=-2).output)
    return flatten.predict(images.astype(np.float32), verbose=0)


def fit_readout(images: np.ndarray, is_pneumonia: np.ndarray) -> tuple[np.ndarray, float]:
    classifier = LogisticRegression(C=1e4, max_iter=5000).fit(pooled_features(images),
                                                               is_pneumonia)
    return classifier.coef_[0], float(classifier.intercept_[0])


def export_readout(base: Path, weights: np.ndarray, bias: float, threshold: float = 0.5,
                   version: int = 1) -> Path:
    return export_for_serving(_readout_model(weights, bias), base_path=base, version=version,
                              threshold=threshold)


def export_quality_models(base: Path, images: np.ndarray, is_pneumonia: np.ndarray) -> dict:
    """{"good", "inverted", "random"} -> SavedModel folders under `base`."""
    weights, bias = fit_readout(images, is_pneumonia)
    rng = np.random.default_rng(7)
    random_weights = rng.normal(0, np.abs(weights).mean(), weights.shape)
    return {
        "good": export_readout(base / "good", weights, bias),
        "inverted": export_readout(base / "inverted", -weights, -bias),
        "random": export_readout(base / "random", random_weights, 0.0),
    }
