"""A SavedModel logged as an MLflow pyfunc model: loaded back from a real MLflow server, it answers
what the SavedModel answers; the folder is found again inside a downloaded version."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from services.trainer.artifact.pyfunc_model import (
    find_saved_model_dir,
    log_saved_model,
)
from shared.contract import (
    CLASS_NAMES,
    INPUT_NAME,
    PNEUMONIA_CLASSES,
    PNEUMONIA_PROBABILITY,
    SERVING_SIGNATURE,
    THRESHOLD,
)
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.test_registry import unique


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return make_tiny_serving_model(tmp_path_factory.mktemp("export"), 1, seed=4, threshold=0.3)


def test_the_logged_model_answers_what_the_saved_model_answers(mlflow_server, saved_model,
                                                              tmp_path):
    import tensorflow as tf

    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    mlflow.set_experiment(unique("pyfunc"))
    with mlflow.start_run():
        uri = log_saved_model(saved_model)
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 1), dtype=np.uint8)

    answer = mlflow.pyfunc.load_model(uri).predict(images)

    direct = tf.saved_model.load(str(saved_model)).signatures[SERVING_SIGNATURE](
        **{INPUT_NAME: tf.constant(images)})
    assert list(answer.columns) == [PNEUMONIA_PROBABILITY, *CLASS_NAMES, THRESHOLD]
    np.testing.assert_allclose(answer[PNEUMONIA_PROBABILITY],
                               direct[PNEUMONIA_PROBABILITY].numpy(), rtol=1e-6)
    np.testing.assert_allclose(answer[THRESHOLD], 0.3, rtol=1e-6)
    np.testing.assert_allclose(answer[list(CLASS_NAMES)].sum(axis=1), 1.0, rtol=1e-5)
    pneumonia = answer[[CLASS_NAMES[i] for i in PNEUMONIA_CLASSES]].sum(axis=1)
    np.testing.assert_allclose(answer[PNEUMONIA_PROBABILITY], pneumonia, rtol=1e-5)

    downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "download"))
    found = find_saved_model_dir(downloaded)
    assert (found / "saved_model.pb").read_bytes() == (saved_model / "saved_model.pb").read_bytes()


def test_a_download_with_no_or_two_saved_models_is_refused(saved_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="found 0"):
        find_saved_model_dir(tmp_path)
    shutil.copytree(saved_model, tmp_path / "a")
    assert find_saved_model_dir(tmp_path) == tmp_path / "a"
    shutil.copytree(saved_model, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="found 2"):
        find_saved_model_dir(tmp_path)
