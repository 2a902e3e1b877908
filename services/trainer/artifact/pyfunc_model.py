"""The exported SavedModel as an MLflow pyfunc model, so a registered version carries the folder.

The SavedModel folder is logged unchanged as the artifact `saved_model`; publishing copies that
folder into the serving base. `predict` runs its `serving_default` signature, so the registered
model can also be loaded with `mlflow.pyfunc.load_model` for checks in a notebook.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from shared.contract import (
    CLASS_NAMES,
    CLASS_PROBABILITIES,
    INPUT_NAME,
    PNEUMONIA_PROBABILITY,
    SERVING_SIGNATURE,
    THRESHOLD,
)

SAVED_MODEL_ARTIFACT = "saved_model"
MODEL_ARTIFACT_PATH = "model"
# Written into the logged model's requirements instead of inferring them (slow, and it would
# list the whole trainer environment).
PIP_REQUIREMENTS = ["tensorflow==2.21.*", "numpy", "pandas"]


class ServingSavedModel(mlflow.pyfunc.PythonModel):
    """pyfunc over the SavedModel artifact: uint8 images [N, S, S, 1] in, probabilities out."""

    def load_context(self, context) -> None:
        import tensorflow as tf

        self._serve = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT]).signatures[
            SERVING_SIGNATURE]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import tensorflow as tf

        images = np.asarray(model_input, dtype=np.uint8)
        outputs = self._serve(**{INPUT_NAME: tf.constant(images)})
        probabilities = outputs[CLASS_PROBABILITIES].numpy()
        return pd.DataFrame({
            PNEUMONIA_PROBABILITY: outputs[PNEUMONIA_PROBABILITY].numpy(),
            **{name: probabilities[:, i] for i, name in enumerate(CLASS_NAMES)},
            THRESHOLD: outputs[THRESHOLD].numpy(),
        })


def log_saved_model(saved_model_dir: str | Path) -> str:
    """Log the SavedModel folder as the active run's model; returns the model URI to register."""
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=ServingSavedModel(),
        artifacts={SAVED_MODEL_ARTIFACT: str(saved_model_dir)},
        pip_requirements=PIP_REQUIREMENTS,
    )
    return info.model_uri


def find_saved_model_dir(downloaded: str | Path) -> Path:
    """The SavedModel folder inside a downloaded model version (the one holding saved_model.pb)."""
    matches = sorted(Path(downloaded).rglob("saved_model.pb"))
    if len(matches) != 1:
        raise FileNotFoundError(
            f"expected one saved_model.pb under {downloaded}, found {len(matches)}")
    return matches[0].parent
