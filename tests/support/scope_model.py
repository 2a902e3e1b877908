"""A tiny served model with the screening outputs (SCOPE_SCORES / SCOPE_THRESHOLDS), whose scores
are a controllable function of the pixels, and a model server that serves it.

Column k of SCOPE_SCORES (the SCOPE_CHECKS order) is the mean absolute difference between
horizontal neighbours in the 16 x 16 block at the top of the input, columns 16k..16k+15, over 255:
a film has smooth corners (score near 0), a 0/255 checkerboard painted there scores near 1.
Every threshold is SCORE_THRESHOLD. `mark(pixels, reason)` paints that reason's block, so a test
decides which reasons the model raises. The prediction is a fixed function of the mean grey level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.contract import (
    ASSETS_EXTRA,
    CLASS_NAMES,
    CLASS_PROBABILITIES,
    GRADCAM_SIGNATURE,
    HEATMAP,
    INPUT_NAME,
    MODEL_INFO_FILE,
    MODEL_NAME,
    PNEUMONIA_PROBABILITY,
    SCOPE_CHECKS,
    SCOPE_SCORES,
    SCOPE_THRESHOLDS,
    SERVING_SIGNATURE,
    THRESHOLD,
    pneumonia_probability,
)
from tests.support.model_server import ModelServer

IMAGE_SIZE = 224
BLOCK = 16
SCORE_THRESHOLD = 0.5
DECISION_THRESHOLD = 0.5


def mark(pixels: np.ndarray, reason: str) -> np.ndarray:
    """A copy of 224 x 224 `pixels` with `reason`'s block painted as a 0/255 checkerboard."""
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError("mark() needs the model's own input size, so no resize blurs the block")
    column = SCOPE_CHECKS.index(reason) * BLOCK
    marked = pixels.copy()
    board = (np.indices((BLOCK, BLOCK)).sum(axis=0) % 2 * 255).astype(np.uint8)
    marked[:BLOCK, column:column + BLOCK] = board
    return marked


def _scope_module():
    """The tf.Module (built on demand: importing this file must not import TensorFlow)."""
    import tensorflow as tf

    class _ScopeModel(tf.Module):
        def _outputs(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            x = tf.cast(image, tf.float32)[..., 0] / 255.0  # [N, S, S]
            batch = tf.shape(x)[0]
            top = x[:, :BLOCK, :BLOCK * len(SCOPE_CHECKS)]
            steps = tf.abs(top[:, :, 1:] - top[:, :, :-1])
            steps = tf.pad(steps, [[0, 0], [0, 0], [0, 1]])
            blocks = tf.reshape(steps, [batch, BLOCK, len(SCOPE_CHECKS), BLOCK])
            scores = tf.reduce_mean(blocks, axis=[1, 3]) * (BLOCK / (BLOCK - 1))
            mean = tf.reduce_mean(x, axis=[1, 2])
            logits = tf.stack([mean, 1.0 - mean, 0.5 * (1.0 - mean)], axis=1) * 4.0
            classes = tf.nn.softmax(logits, axis=1)
            return {
                PNEUMONIA_PROBABILITY: pneumonia_probability(classes),
                CLASS_PROBABILITIES: classes,
                THRESHOLD: tf.fill([batch], DECISION_THRESHOLD),
                SCOPE_SCORES: scores,
                SCOPE_THRESHOLDS: tf.fill([batch, len(SCOPE_CHECKS)], SCORE_THRESHOLD),
            }

        @tf.function(input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8, name=INPUT_NAME)])
        def serve(self, image):
            return self._outputs(image)

        @tf.function(input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.uint8, name=INPUT_NAME)])
        def gradcam(self, image):
            return {**self._outputs(image), HEATMAP: tf.cast(image, tf.float32)[..., 0] / 255.0}

    return _ScopeModel()


def save_scope_model(base_path: Path, version: int = 1) -> Path:
    """`<base_path>/<MODEL_NAME>/<version>/` with both signatures and model_info.json."""
    import tensorflow as tf

    module = _scope_module()
    target = Path(base_path) / MODEL_NAME / str(version)
    tf.saved_model.save(module, str(target), signatures={SERVING_SIGNATURE: module.serve,
                                                          GRADCAM_SIGNATURE: module.gradcam})
    (target / ASSETS_EXTRA).mkdir(exist_ok=True)
    (target / ASSETS_EXTRA / MODEL_INFO_FILE).write_text(json.dumps({
        "model_name": MODEL_NAME, "version": version, "threshold": DECISION_THRESHOLD,
        "image_size": IMAGE_SIZE, "class_names": list(CLASS_NAMES), "screening": "test"}))
    return target


def start_scope_model_server(tmp: Path) -> ModelServer:
    """A model server over `tmp/models` serving only the screening test model, as version 1."""
    server = ModelServer(tmp / "models", tmp / "logs")
    save_scope_model(server.base_path)
    return server.start(wait_for=1)
