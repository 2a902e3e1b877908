"""Fixtures for the trainer tests: one short training run on the repository's sample images."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.storage import LocalStorage
from tests.shared.xray_files import png_bytes
from tests.support.procs import REPO_ROOT
from tests.trainer.dataset_layouts import T0, base_layout, confirm, noise

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def sample_training(tmp_path_factory):
    """(TrainConfig, TrainingOutcome) of a 1-epoch run on about 30 sample images, single split."""
    from services.trainer.modeling.config import TrainConfig
    from services.trainer.modeling.recipe import run_training

    config = TrainConfig(data_dir=str(SAMPLE_DIR), out_dir=str(tmp_path_factory.mktemp("train")),
                         epochs=1, batch_size=8, backbone="custom", width=8, max_images=30,
                         validation_fraction=0.3, verbose=0)
    return config, run_training(config)


@pytest.fixture(scope="session")
def sample_export(sample_training, tmp_path_factory):
    """The sample run's model exported for serving: the version folder."""
    from services.trainer.artifact.export import export_for_serving

    _, outcome = sample_training
    return export_for_serving(outcome.models, base_path=tmp_path_factory.mktemp("serving"),
                              version=1, threshold=outcome.threshold,
                              temperature=outcome.temperature)


@pytest.fixture
def world(tmp_path):
    """A base data set and a storage with films confirmed at two sites around T0."""
    base = base_layout(tmp_path / "base")
    storage = LocalStorage(tmp_path / "storage")
    confirm(storage, "north", "job-a", "PNEUMONIA", T0 - timedelta(days=3),
            png_bytes(noise("film-a")), subtype="viral")
    confirm(storage, "north", "job-b", "NORMAL", T0 - timedelta(days=1),
            png_bytes(noise("film-b")))
    confirm(storage, "south", "job-c", "PNEUMONIA", T0 - timedelta(hours=1),
            png_bytes(noise("film-c")))
    confirm(storage, "south", "job-late", "NORMAL", T0 + timedelta(days=2),
            png_bytes(noise("film-late")))
    return base, storage, tmp_path


@pytest.fixture
def run_main(capsys, monkeypatch):
    """The same command line run in this process (no interpreter start): (exit status, stderr).

    An exception the command does not turn into an exit status fails the test."""
    from services.trainer.cli.main import main
    from services.trainer.settings import get_settings

    def run(*args: str, env: dict | None = None) -> tuple[int, str]:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's refusals
            code = exit_.code
        finally:
            get_settings.cache_clear()
        return code, capsys.readouterr().err

    return run
