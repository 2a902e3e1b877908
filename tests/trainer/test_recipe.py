"""The training recipe end to end on the sample images, and its building blocks."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from services.trainer.evaluation.metrics import METRIC_KEYS
from services.trainer.modeling.augment import AugmentConfig, augment_batch, gaussian_blur
from services.trainer.modeling.cnn_training import balanced_weights, soft_targets
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.hog import fit_hog_baseline, hog_features, pneumonia_probability
from services.trainer.modeling.model import GRADCAM_LAYER
from services.trainer.modeling.recipe import run_training, select_records, subsample
from shared.contract import UNKNOWN_SUBTYPE
from tests.trainer.conftest import SAMPLE_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_single_split_outcome(sample_training):
    config, outcome = sample_training
    assert len(outcome.models) == 1
    model = outcome.models[0]
    assert model.get_layer(GRADCAM_LAYER) is not None
    logits = model(np.full((2, 224, 224, 1), 100.0, np.float32), training=False)
    assert tuple(logits.shape) == (2, 3)
    assert 0.0 <= outcome.threshold <= 1.0 and outcome.temperature > 0

    validation = outcome.validation
    assert set(METRIC_KEYS) <= set(validation)
    assert validation["n"] == outcome.params["validation_images"][0]
    assert validation["n"] + outcome.params["train_images"][0] == outcome.params["data_images"]
    # The threshold is chosen on these images, so it must reach the target sensitivity on them.
    assert validation["sensitivity"] >= config.target_sensitivity
    assert outcome.baseline is not None and set(METRIC_KEYS) <= set(outcome.baseline)
    assert outcome.calibration["temperature"] == outcome.temperature
    assert outcome.calibration["ece_after"] == validation["ece"]


def test_params_history_figures_and_json(sample_training):
    config, outcome = sample_training
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        assert name in outcome.params
    assert len(outcome.params["data_fingerprint"]) == 64
    assert outcome.params["data_images"] <= 30 + 4  # whole patients: about max_images
    assert [row["epoch"] for row in outcome.history] == [1]
    assert {"loss", "val_loss", "auroc", "val_auroc"} <= set(outcome.history[0])
    for name in ("confusion_matrix", "roc", "precision_recall", "calibration", "training_curves"):
        assert outcome.figures[name].read_bytes()[:8] == PNG_MAGIC, name
    saved = json.loads((outcome.figures["roc"].parents[1] / "outcome.json").read_text())
    assert saved["threshold"] == outcome.threshold
    assert saved["validation"]["confusion"] == outcome.validation["confusion"]


def test_exported_model_has_the_serving_layout(sample_export):
    assert sample_export.name == "1" and sample_export.parent.name == "cxr-pneumonia"
    assert (sample_export / "saved_model.pb").is_file()
    assert (sample_export / "assets.extra" / "tf_serving_warmup_requests").is_file()


@pytest.mark.slow
def test_folds_give_out_of_fold_metrics_and_a_refit_model(tmp_path):
    # fold mechanics, whatever the network: the small custom one at 64 px (the default network
    # trains end to end in test_evaluate's train command)
    config = TrainConfig(data_dir=str(SAMPLE_DIR), out_dir=str(tmp_path), epochs=1, batch_size=8,
                         backbone="custom", width=4, image_size=64, folds=2, ship="refit",
                         baseline=True, verbose=0)
    outcome = run_training(config)
    assert len(outcome.models) == 1 and outcome.params["ensemble_size"] == 1
    assert outcome.validation["n"] == outcome.params["data_images"]  # every image scored once
    assert [f["fold"] for f in outcome.folds] == [0, 1]
    assert sum(f["n"] for f in outcome.folds) == outcome.validation["n"]
    assert [f["best_epoch"] for f in outcome.folds] == [1, 1]
    assert set(outcome.fold_summary["auroc"]) == {"mean", "sd"}
    assert {row["fold"] for row in outcome.history} == {0, 1}
    # the HOG baseline is scored on the same folds, at its own pooled out-of-fold threshold
    assert [f["fold"] for f in outcome.baseline["folds"]] == [0, 1]
    assert sum(f["n"] for f in outcome.baseline["folds"]) == outcome.baseline["n"] == 40
    assert {f["threshold"] for f in outcome.baseline["folds"]} == {outcome.baseline["threshold"]}
    assert set(outcome.baseline["fold_summary"]["auroc"]) == {"mean", "sd"}


def test_sample_folder_without_splits_and_subsample():
    records = select_records(TrainConfig(data_dir=str(SAMPLE_DIR)))
    assert len(records) == 40
    kept = subsample(records, 20, seed=0)
    assert 15 <= len(kept) <= 25
    assert {r.label for r in kept} == {"NORMAL", "PNEUMONIA"}
    patients_kept = {r.patient for r in kept}
    assert all(r in kept for r in records if r.patient in patients_kept)  # whole patients only


def test_class_weights_balance_every_group():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1 + [UNKNOWN_SUBTYPE] * 2)
    weights = balanced_weights(labels)
    totals = {label: weights[labels == label].sum() for label in (0, 1, 2, UNKNOWN_SUBTYPE)}
    assert np.allclose(list(totals.values()), len(labels) / 4)
    assert weights.mean() == pytest.approx(1.0)
    targets = soft_targets(labels)
    np.testing.assert_allclose(targets[labels == UNKNOWN_SUBTYPE], [[0, 0.5, 0.5]] * 2)
    np.testing.assert_allclose(targets[:1], [[1, 0, 0]])


def test_augmentation_is_seeded_and_keeps_range():
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    seed = tf.constant([7, 1], tf.int64)
    first = augment_batch(images, seed).numpy()
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, augment_batch(images, seed).numpy())
    assert not np.allclose(first, augment_batch(images, tf.constant([7, 2], tf.int64)).numpy())


def test_augmentation_with_zero_ranges_is_the_identity():
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    still = AugmentConfig(rotation_deg=0, shear_deg=0, zoom=(1, 1), translation=0, brightness=0,
                          contrast=(1, 1), gamma=(1, 1), blur_sigma=(0, 0), noise=0)
    out = augment_batch(images, tf.constant([0, 0], tf.int64), still).numpy()
    np.testing.assert_allclose(out, images, atol=1e-3)


def test_blur_keeps_the_mean_and_softens_edges():
    images = np.zeros((2, 32, 32, 1), np.float32)
    images[:, :, 16:] = 200.0
    blurred = gaussian_blur(tf.constant(images), tf.constant([0.0, 1.5])).numpy()
    np.testing.assert_allclose(blurred[0], images[0], atol=1e-3)  # sigma 0: unchanged
    row = blurred[1, 16, :, 0]
    assert 0 < row[15] < 100 < row[16] < 200  # the step is spread over its neighbours
    np.testing.assert_allclose(row[6:26].sum(), images[1, 16, 6:26, 0].sum(), rtol=1e-4)


def test_augmentation_never_mirrors():
    # A bright left half stays on the left: no flip, and shifts are a few pixels at most.
    image = np.zeros((1, 64, 64, 1), np.float32)
    image[:, :, :32] = 255.0
    geometry_only = AugmentConfig(brightness=0, contrast=(1, 1), gamma=(1, 1))
    for step in range(20):
        out = augment_batch(image, tf.constant([3, step], tf.int64), geometry_only).numpy()
        assert out[0, 16:48, :16].mean() > out[0, 16:48, 48:].mean() + 100


def test_hog_baseline_separates_oriented_textures():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224]
    images, is_pneumonia = [], []
    for i in range(40):
        stripes = np.sin((yy if i % 2 else xx) / 3.0 + rng.uniform(0, 6))  # class by orientation
        noisy = 128 + 60 * stripes + rng.normal(0, 20, stripes.shape)
        images.append(np.clip(noisy, 0, 255).astype(np.uint8)[..., None])
        is_pneumonia.append(i % 2)
    images, is_pneumonia = np.stack(images), np.array(is_pneumonia)
    features = hog_features(images)
    assert features.shape == (40, 1764)
    train, test = np.arange(30), np.arange(30, 40)
    model = fit_hog_baseline(features[train], is_pneumonia[train], np.arange(30))
    p = pneumonia_probability(model, features[test])
    assert ((p >= 0.5) == is_pneumonia[test]).all()


@pytest.mark.slow
def test_a_stopped_cross_validation_resumes_from_its_finished_folds(tmp_path, monkeypatch):
    import services.trainer.modeling.recipe as recipe

    # the checkpoint mechanics do not depend on the network: the small custom one at 64 px
    config = TrainConfig(data_dir=str(SAMPLE_DIR), out_dir=str(tmp_path), epochs=1, batch_size=8,
                         backbone="custom", width=4, image_size=64, folds=2, ship="ensemble",
                         baseline=False, verbose=0)
    first = run_training(config)
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["fold-0", "fold-1"]

    # fold 1 "did not finish": only it is trained again; fold 0 comes from its checkpoint
    (tmp_path / "folds" / "fold-1" / "fold.json").unlink()
    trained = []
    real_fit = recipe.fit_cnn
    monkeypatch.setattr(recipe, "fit_cnn",
                        lambda *a, **kw: trained.append(kw["seed_offset"]) or real_fit(*a, **kw))
    second = run_training(config)
    assert trained == [1]
    assert second.folds[0]["auroc"] == first.folds[0]["auroc"]
    assert second.folds[0]["best_epoch"] == first.folds[0]["best_epoch"]

    # other settings give other networks: a fold's key changes, and its checkpoint is not reused
    images = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
    train_idx, val_idx = np.array([0, 1, 2]), np.array([3])
    key = recipe._fold_key(config, images, train_idx, val_idx)
    other = dataclasses.replace(config, learning_rate=1e-3)
    assert recipe._fold_key(other, images, train_idx, val_idx) != key
    assert recipe._fold_key(config, images, np.array([0, 1, 3]), np.array([2])) != key
    assert recipe._fold_key(config, images[::-1].copy(), train_idx, val_idx) != key
    # what only changes the output's place or form keeps it
    assert recipe._fold_key(dataclasses.replace(config, out_dir="elsewhere", verbose=1,
                                                ship="refit"), images, train_idx, val_idx) == key
    assert recipe.FoldCheckpoint(tmp_path / "folds" / "fold-0", key).load(config) is None
