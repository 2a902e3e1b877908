"""The exported SavedModel honours the serving contract in docs/architecture.md."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from services.trainer.artifact.export import export_for_serving
from services.trainer.modeling.model import build_cnn
from tests.support.tiny_model import make_tiny_serving_model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, (3, 224, 224, 1)).astype(np.uint8)


def test_signatures_and_outputs(tmp_path, images):
    version_dir = make_tiny_serving_model(tmp_path, 7, threshold=0.42)
    assert version_dir == tmp_path / "cxr-pneumonia" / "7"
    loaded = tf.saved_model.load(str(version_dir))
    assert set(loaded.signatures) == {"serving_default", "gradcam"}
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["image"].dtype == tf.uint8
    out = {k: v.numpy() for k, v in serve(image=tf.constant(images)).items()}
    assert out["class_probabilities"].shape == (3, 3)
    np.testing.assert_allclose(out["class_probabilities"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        out["pneumonia_probability"], out["class_probabilities"][:, 1:].sum(axis=1), atol=1e-6
    )
    np.testing.assert_allclose(out["threshold"], [0.42] * 3, atol=1e-7)
    heat = loaded.signatures["gradcam"](image=tf.constant(images))["heatmap"].numpy()
    assert heat.shape == (3, 224, 224)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6


def test_matches_keras_with_temperature_and_ensemble(tmp_path, images):
    models = [build_cnn(width=4, seed=1), build_cnn(width=4, seed=2)]
    version_dir = export_for_serving(
        models, base_path=tmp_path, version=1, threshold=0.3, temperature=2.0
    )
    expected = np.mean(
        [tf.nn.softmax(m(images.astype("float32"), training=False) / 2.0).numpy() for m in models],
        axis=0,
    )
    got = tf.saved_model.load(str(version_dir)).signatures["serving_default"](
        image=tf.constant(images)
    )
    np.testing.assert_allclose(got["class_probabilities"].numpy(), expected, atol=1e-5)
    # The Grad-CAM signature answers the same prediction from its own forward pass.
    explained = tf.saved_model.load(str(version_dir)).signatures["gradcam"](
        image=tf.constant(images)
    )
    for key in ("pneumonia_probability", "class_probabilities", "threshold"):
        np.testing.assert_allclose(explained[key].numpy(), got[key].numpy(), atol=1e-6)
    assert explained["heatmap"].shape == (3, 224, 224)
    info = json.loads((version_dir / "assets.extra" / "model_info.json").read_text())
    assert info["ensemble_size"] == 2 and info["temperature"] == 2.0


def test_warmup_records_cover_both_signatures(tmp_path):
    version_dir = make_tiny_serving_model(tmp_path, 1)
    records = list(
        tf.data.TFRecordDataset(str(version_dir / "assets.extra" / "tf_serving_warmup_requests"))
    )
    signatures = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        signatures.append(log.predict_log.request.model_spec.signature_name)
        assert tf.make_ndarray(log.predict_log.request.inputs["image"]).shape == (1, 224, 224, 1)
    assert signatures == ["serving_default", "gradcam"]


def test_versions_are_immutable_and_staging_is_cleaned(tmp_path):
    make_tiny_serving_model(tmp_path, 1)
    with pytest.raises(FileExistsError):
        make_tiny_serving_model(tmp_path, 1)
    assert sorted(p.name for p in (tmp_path / "cxr-pneumonia").iterdir()) == ["1"]


def test_rejects_bad_operating_point(tmp_path):
    with pytest.raises(ValueError):
        export_for_serving(build_cnn(width=4), base_path=tmp_path, version=1, threshold=1.5)
