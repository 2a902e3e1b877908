"""One preprocessing path, and the exported model answering exactly what the Keras model answers."""

import json

import numpy as np
import pytest
import tensorflow as tf

from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.evaluation.calibration import softmax
from shared.imaging import decode_xray, to_model_input
from tests.trainer.conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def sample_records():
    return scan_dataset(SAMPLE_DIR)


@pytest.fixture(scope="module")
def worker_path_images(sample_records):
    """The worker path: the file bytes through decode_xray, then to_model_input."""
    return np.stack([to_model_input(decode_xray(r.path.read_bytes()).pixels, 224)
                     for r in sample_records])


def test_dataset_loader_equals_the_worker_path(sample_records, worker_path_images, tmp_path):
    np.testing.assert_array_equal(load_images(sample_records), worker_path_images)
    # The cached copy the trainer reads back on a second run is the same array too.
    load_images(sample_records, cache_dir=tmp_path)
    np.testing.assert_array_equal(load_images(sample_records, cache_dir=tmp_path),
                                  worker_path_images)


def test_saved_model_matches_keras_model(sample_training, sample_export, worker_path_images):
    _, outcome = sample_training
    serve = tf.saved_model.load(str(sample_export)).signatures["serving_default"]
    served = serve(image=tf.constant(worker_path_images))
    logits = outcome.models[0](worker_path_images.astype(np.float32), training=False).numpy()
    expected = softmax(logits, outcome.temperature)
    np.testing.assert_allclose(served["class_probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served["pneumonia_probability"].numpy(),
                               expected[:, 1] + expected[:, 2], atol=1e-5)
    np.testing.assert_allclose(served["threshold"].numpy(), outcome.threshold, atol=1e-7)
    # Not a degenerate model: the images get different answers.
    assert np.ptp(served["pneumonia_probability"].numpy()) > 1e-4


def test_export_records_the_operating_point(sample_training, sample_export):
    _, outcome = sample_training
    info = json.loads((sample_export / "assets.extra" / "model_info.json").read_text())
    assert info["threshold"] == pytest.approx(outcome.threshold)
    assert info["temperature"] == pytest.approx(outcome.temperature)
