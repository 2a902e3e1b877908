"""Fixtures for the trainer tests: one short training run on the repository's sample images."""

from __future__ import annotations

import pytest

from tests.support.procs import REPO_ROOT

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def sample_training(tmp_path_factory):
    """(TrainConfig, TrainingOutcome) of a 1-epoch run on about 30 sample images, single split."""
    from services.trainer.recipe import TrainConfig, run_training

    config = TrainConfig(data_dir=str(SAMPLE_DIR), out_dir=str(tmp_path_factory.mktemp("train")),
                         epochs=1, batch_size=8, backbone="custom", width=8, max_images=30,
                         validation_fraction=0.3, verbose=0)
    return config, run_training(config)


@pytest.fixture(scope="session")
def sample_export(sample_training, tmp_path_factory):
    """The sample run's model exported for serving: the version folder."""
    from services.trainer.export import export_for_serving

    _, outcome = sample_training
    return export_for_serving(outcome.models, base_path=tmp_path_factory.mktemp("serving"),
                              version=1, threshold=outcome.threshold,
                              temperature=outcome.temperature)
