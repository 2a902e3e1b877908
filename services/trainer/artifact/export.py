"""Export trained Keras models as a SavedModel in TensorFlow Serving's layout.

This is the contract with serving (docs/architecture.md, "The exported model"):
`<base>/<model_name>/<version>/` holding a SavedModel with two signatures that take uint8
images [N, S, S, 1]:

- `serving_default` -> `pneumonia_probability` [N], `class_probabilities` [N, 3]
  (normal, bacterial, viral; temperature-scaled softmax, averaged over an ensemble) and
  `threshold` [N] (the model's own operating point, so it travels with the version);
- `gradcam` -> `heatmap` [N, S, S] in 0..1 (Grad-CAM of the pneumonia probability on the map
  `gradcam_layer` names) and the same three outputs as `serving_default`, computed by the same
  forward pass: one call answers a job that wants the prediction and its explanation (clients
  check the outputs in the metadata).

With a scope screen (`services.trainer.scope.model.ScopeScreen`), both signatures also answer
`scope_scores` and `scope_thresholds` [N, len(SCOPE_CHECKS)] from the same input; an export
without one answers the pneumonia outputs only, as older versions do.

Warm-up requests for both signatures go to `assets.extra/tf_serving_warmup_requests`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from services.trainer.modeling.model import gradcam_layer, is_folded, serving_form
from services.trainer.scope.model import ScopeScreen
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
    WARMUP_FILE,
    pneumonia_probability,
)

# `<version>/assets.extra/<SCOPE_DIR>/`: the screen inside a version (ScopeScreen.save layout).
SCOPE_DIR = "scope"


class _ServingFunctions:
    """The two signature functions over one model or an ensemble (probabilities averaged)."""

    def __init__(self, models: Sequence[keras.Model], threshold: float, temperature: float,
                 scope: ScopeScreen | None = None) -> None:
        self.models = list(models)
        self.scope = scope
        self.gradcam_models = [
            keras.Model(m.inputs, [m.get_layer(gradcam_layer(m)).output, m.outputs[0]])
            for m in self.models
        ]
        self.threshold = float(threshold)
        self.temperature = float(temperature)

    def _probabilities(self, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(logits / self.temperature, axis=-1)

    def _prediction(self, member_probs: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        probs = tf.add_n(member_probs) / float(len(member_probs))
        p = pneumonia_probability(probs)
        return {
            PNEUMONIA_PROBABILITY: p,
            CLASS_PROBABILITIES: probs,
            THRESHOLD: tf.fill(tf.shape(p), tf.constant(self.threshold, tf.float32)),
        }

    def _scope(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.scope is None:
            return {}
        scores = self.scope.scores_tf(pixels)
        thresholds = tf.constant(self.scope.thresholds, tf.float32)[tf.newaxis, :]
        return {SCOPE_SCORES: scores,
                SCOPE_THRESHOLDS: tf.tile(thresholds, [tf.shape(scores)[0], 1])}

    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(image, tf.float32)
        return {**self._prediction(
            [self._probabilities(m(pixels, training=False)) for m in self.models]
        ), **self._scope(pixels)}

    def gradcam(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(image, tf.float32)
        size = tf.shape(image)[1:3]
        cams, member_probs = [], []
        for grad_model in self.gradcam_models:
            with tf.GradientTape() as tape:
                feature_map, logits = grad_model(pixels, training=False)
                tape.watch(feature_map)
                probs = self._probabilities(logits)
                score = pneumonia_probability(probs)
            member_probs.append(probs)
            grads = tape.gradient(score, feature_map)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))
            cams.append(tf.image.resize(cam[..., tf.newaxis], size, method="bilinear")[..., 0])
        cam = tf.add_n(cams) / float(len(cams))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return {**self._prediction(member_probs), HEATMAP: tf.math.divide_no_nan(cam, peak),
                **self._scope(pixels)}


def _track_each_variable_once(archive: keras.export.ExportArchive) -> None:
    """Keep each weight once in the SavedModel's variables file.

    `track` lists the Keras variables, while the endpoints capture the TensorFlow variables
    inside them; the SavedModel saver sees two objects and writes every weight twice (the file
    doubles in size). Listing the TensorFlow variables themselves, in the same order, makes the
    two references one object, and the revived `variables` keep their names and order.
    """
    trackable = archive._tf_trackable  # noqa: SLF001 - the lists `track` fills
    for attribute in ("variables", "trainable_variables", "non_trainable_variables"):
        listed = getattr(trackable, attribute)
        setattr(trackable, attribute, [getattr(v, "value", v) for v in listed])


def _write_warmup_requests(version_dir: Path, model_name: str, image_size: int) -> None:
    """One batch-1 request per signature, in TF Serving's PredictionLog TFRecord format."""
    extra = version_dir / ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    image = np.full((1, image_size, image_size, 1), 128, dtype=np.uint8)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        for signature in (SERVING_SIGNATURE, GRADCAM_SIGNATURE):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature),
                inputs={INPUT_NAME: tf.make_tensor_proto(image)},
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_for_serving(
    models: keras.Model | Sequence[keras.Model],
    *,
    base_path: str | Path,
    version: int,
    threshold: float,
    temperature: float = 1.0,
    model_name: str = MODEL_NAME,
    extra_info: dict | None = None,
    scope: ScopeScreen | None = None,
) -> Path:
    """Write `<base_path>/<model_name>/<version>/`; the folder appears complete or not at all.

    `scope` adds the screening outputs to both signatures (module docstring).
    """
    if isinstance(models, keras.Model):
        models = [models]
    models = [serving_form(model) for model in models]
    if not models:
        raise ValueError("export_for_serving needs at least one model")
    if not 0.0 <= threshold <= 1.0 or temperature <= 0:
        raise ValueError(f"bad operating point: threshold={threshold}, temperature={temperature}")
    image_size = int(models[0].inputs[0].shape[1])
    if scope is not None and image_size != scope.input_size:
        raise ValueError(f"the scope screen takes {scope.input_size}-pixel inputs, "
                         f"the networks {image_size}")
    if scope is not None and len(scope.thresholds) != len(SCOPE_CHECKS):
        raise ValueError(f"the scope screen has {len(scope.thresholds)} thresholds, "
                         f"not one per check of {SCOPE_CHECKS}")
    functions = _ServingFunctions(models, threshold, temperature, scope)

    archive = keras.export.ExportArchive()
    tracked = [*functions.models, *functions.gradcam_models]
    for model in tracked + ([scope.net] if scope is not None else []):
        archive.track(model)
    _track_each_variable_once(archive)
    spec = [tf.TensorSpec([None, image_size, image_size, 1], tf.uint8, name=INPUT_NAME)]
    archive.add_endpoint(SERVING_SIGNATURE, functions.serve, input_signature=spec)
    archive.add_endpoint(GRADCAM_SIGNATURE, functions.gradcam, input_signature=spec)

    model_dir = Path(base_path) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(int(version))
    if final.exists():
        raise FileExistsError(f"{final} already exists: versions are immutable")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        archive.write_out(str(staging), verbose=False)
        _write_warmup_requests(staging, model_name, image_size)
        if scope is not None:  # the screen's own files, so the version can be written again
            scope.save(staging / ASSETS_EXTRA / SCOPE_DIR)
        info = {
            "model_name": model_name,
            "version": int(version),
            "threshold": float(threshold),
            "temperature": float(temperature),
            "image_size": image_size,
            "class_names": list(CLASS_NAMES),
            "ensemble_size": len(functions.models),
            "gradcam_layer": gradcam_layer(functions.models[0]),
            **(extra_info or {}),
            "batch_norm_folded": any(is_folded(model) for model in functions.models),
        }
        if scope is not None:
            info["scope"] = {"checks": list(SCOPE_CHECKS),
                             "thresholds": [float(t) for t in scope.thresholds],
                             **{k: v for k, v in scope.info.items()
                                if k not in ("checks", "thresholds")}}
        (staging / ASSETS_EXTRA / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2))
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
