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
            "serving_default"]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import tensorflow as tf

        images = np.asarray(model_input, dtype=np.uint8)
        outputs = self._serve(image=tf.constant(images))
        probabilities = outputs["class_probabilities"].numpy()
        return pd.DataFrame({
            "pneumonia_probability": outputs["pneumonia_probability"].numpy(),
            "normal": probabilities[:, 0],
            "bacterial": probabilities[:, 1],
            "viral": probabilities[:, 2],
            "threshold": outputs["threshold"].numpy(),
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
