"""A two-input SavedModel unrelated to X-rays, to show the server knows nothing of the CXR model."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf


class _Arithmetic(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.float32, name="y")])
    def serve(self, x, y):
        return {"sum": x + y, "product": x * y}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def total(self, x):
        return {"total": tf.reduce_sum(x, axis=1)}


def save_arithmetic_model(base_path: Path, version: int) -> Path:
    """`<base_path>/<version>/`: serving_default(x, y) -> sum, product, and the single-output
    signature `total`(x) -> total (no warm-up file)."""
    module = _Arithmetic()
    target = Path(base_path) / str(version)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve,
                                                          "total": module.total})
    return target
