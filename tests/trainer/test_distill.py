"""Distillation: teachers in the training targets, refused teachers, the whole run."""

import json
from pathlib import Path

import numpy as np
import pytest

from services.trainer.artifact.scoring import score_saved_model
from services.trainer.cli.main import main
from services.trainer.data.dataset import load_images
from services.trainer.modeling.cnn_training import training_stream, training_targets
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.distill import (
    DistillationError,
    Teacher,
    check_teachers,
    teacher_probabilities,
    training_split,
)
from services.trainer.modeling.recipe import run_training, select_records
from services.trainer.settings import get_settings
from shared.contract import ASSETS_EXTRA, MODEL_INFO_FILE, UNKNOWN_SUBTYPE
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.conftest import SAMPLE_DIR

LABELS = np.array([0, 1, 2, UNKNOWN_SUBTYPE])
TEACHERS_MEAN = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
# smoothing 0.06 turns a one-hot row into 0.96 / 0.02 / 0.02 and the unknown subtype's
# (0, 0.5, 0.5) into (0.02, 0.49, 0.49); then 0.3 of that plus 0.7 of the teachers' row
MIXED = np.array([[0.428, 0.356, 0.216], [0.426, 0.498, 0.076], [0.076, 0.076, 0.848],
                  [0.216, 0.357, 0.427]])


def _small_config(**changes) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(SAMPLE_DIR), "epochs": 1, "batch_size": 8,
                          "backbone": "custom", "width": 4, "image_size": 64, "max_images": 24,
                          "validation_fraction": 0.3, "baseline": False, "verbose": 0,
                          **changes})


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[Path]:
    """Two tiny exported versions, one at the student's input size and one at another."""
    base = tmp_path_factory.mktemp("teachers")
    return [make_tiny_serving_model(base, 1, seed=1, image_size=64),
            make_tiny_serving_model(base, 2, seed=2, image_size=32)]


def _with_info(teacher: Path, target: Path, **fields) -> Path:
    """A copy of an exported teacher whose model_info records `fields` as well."""
    import shutil

    shutil.copytree(teacher, target)
    info_file = target / ASSETS_EXTRA / MODEL_INFO_FILE
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), **fields}))
    return target


def test_targets_mix_the_smoothed_labels_with_the_teachers_mean():
    np.testing.assert_allclose(training_targets(LABELS, 0.06, TEACHERS_MEAN, 0.7), MIXED,
                               atol=1e-6)
    np.testing.assert_allclose(training_targets(LABELS, 0.06),
                               [[0.96, 0.02, 0.02], [0.02, 0.96, 0.02], [0.02, 0.02, 0.96],
                                [0.02, 0.49, 0.49]], atol=1e-6)


def test_each_image_keeps_its_own_target_through_the_shuffled_stream():
    images = np.stack([np.full((8, 8, 1), 10 * (i + 1), np.uint8) for i in range(len(LABELS))])
    config = TrainConfig(batch_size=len(LABELS), augment=False, label_smoothing=0.06,
                         distill_weight=0.7)
    stream = training_stream(images, LABELS, config, TEACHERS_MEAN)
    for x, y, _ in stream.take(2):
        for pixels, target in zip(x.numpy(), y.numpy(), strict=True):
            index = int(round(pixels[0, 0, 0] / 10)) - 1
            np.testing.assert_allclose(target, MIXED[index], atol=1e-6)


def test_teachers_score_the_chosen_images_at_their_own_size(teachers):
    records = select_records(_small_config())[:10]
    images = load_images(records, size=64)
    chosen = np.array([1, 4, 5, 8])
    mean = teacher_probabilities([Teacher.read(t) for t in teachers], score_saved_model,
                                 records, chosen, images=images, image_size=64)

    subset = [records[i] for i in chosen]
    expected = (score_saved_model(teachers[0], load_images(subset, size=64)).class_probabilities
                + score_saved_model(teachers[1], load_images(subset, size=32))
                .class_probabilities) / 2
    np.testing.assert_allclose(mean[chosen], expected, atol=1e-6)
    assert np.isnan(np.delete(mean, chosen, axis=0)).all()


def test_a_teacher_of_other_data_or_another_split_is_refused(teachers, tmp_path):
    other_data = _with_info(teachers[0], tmp_path / "other-data", data_fingerprint="0" * 64)
    with pytest.raises(DistillationError, match="trained on other data"):
        run_training(_small_config(teachers=(str(other_data),)), score_teacher=score_saved_model)

    random_split = training_split(vars(_small_config(validation_strategy="random", seed=3)))
    other_split = _with_info(teachers[0], tmp_path / "other-split", training_split=random_split)
    with pytest.raises(DistillationError, match="validated on another split"):
        run_training(_small_config(teachers=(str(other_split),)), score_teacher=score_saved_model)

    with pytest.raises(DistillationError, match="single validation split"):
        run_training(_small_config(teachers=(str(teachers[0]),), folds=2),
                     score_teacher=score_saved_model)
    with pytest.raises(DistillationError, match="not an exported model version"):
        run_training(_small_config(teachers=(str(tmp_path),)), score_teacher=score_saved_model)


def test_the_train_command_refuses_a_teacher_in_one_line(teachers, tmp_path, capsys):
    other_data = _with_info(teachers[0], tmp_path / "other-data", data_fingerprint="0" * 64)
    status = main(["train", "--data", str(SAMPLE_DIR), "--max-images", "24",
                   "--out", str(tmp_path / "out"), "--teacher", str(other_data)])
    assert status == 2
    assert "was trained on other data" in capsys.readouterr().err


@pytest.mark.slow
def test_distilled_training_runs_and_exports_with_its_teachers(teachers, tmp_path, monkeypatch):
    import services.trainer.cli.training as training_cli
    import services.trainer.modeling.recipe as recipe

    scored, taught = [], []

    def recording_scorer(model_dir, images):
        scores = score_saved_model(model_dir, images)
        scored.append((Path(model_dir), len(images), scores.class_probabilities))
        return scores

    def recording_fit(*args, **kwargs):
        taught.append(kwargs.get("teacher_probabilities"))
        return recipe_fit(*args, **kwargs)

    recipe_fit = recipe.fit_cnn
    monkeypatch.setattr(training_cli, "score_saved_model", recording_scorer)
    monkeypatch.setattr(recipe, "fit_cnn", recording_fit)
    monkeypatch.setenv("CXR_TRAIN_IMAGE_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        status = main([
            "train", "--data", str(SAMPLE_DIR), "--epochs", "1", "--max-images", "24",
            "--batch-size", "8", "--no-baseline", "--out", str(tmp_path / "train"),
            "--export-base", str(tmp_path / "serving"), "--version", "7",
            "--teacher", str(teachers[0]), "--teacher", str(teachers[1]),
            "--set", "backbone=custom", "--set", "width=4", "--set", "image_size=64",
            "--set", "validation_fraction=0.3", "--set", "distill_weight=0.6"])
    finally:
        get_settings.cache_clear()
    assert status == 0

    params = json.loads((tmp_path / "train" / "outcome.json").read_text())["params"]
    # each teacher scored the training images once; the network trained on their mean
    assert [(path, n) for path, n, _ in scored] == [(t, params["train_images"][0])
                                                   for t in teachers]
    assert len(taught) == 1
    np.testing.assert_allclose(taught[0], (scored[0][2] + scored[1][2]) / 2, atol=1e-6)
    assert params["teachers"] == [str(t) for t in teachers] and params["distill_weight"] == 0.6
    assert [t["path"] for t in params["teacher_models"]] == [str(t) for t in teachers]
    info = json.loads((tmp_path / "serving" / "cxr-pneumonia" / "7" / ASSETS_EXTRA
                       / MODEL_INFO_FILE).read_text())
    assert info["teachers"] == params["teacher_models"] and info["distill_weight"] == 0.6
    assert info["data_fingerprint"] == params["data_fingerprint"]
    assert info["training_split"] == {"folds": 1, "validation_strategy": "lowest",
                                      "validation_fraction": 0.3}
    # the export may teach a run on the same data and split, and no run on another split
    student = [Teacher.read(tmp_path / "serving" / "cxr-pneumonia" / "7")]
    check_teachers(student, _small_config(), params["data_fingerprint"])
    with pytest.raises(DistillationError, match="another split"):
        check_teachers(student, _small_config(validation_fraction=0.2), params["data_fingerprint"])
