"""`python -m services.trainer drift-reference`: a version's reference from validation films."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.trainer.artifact.drift_reference import model_outputs, reference_path
from services.trainer.cli.main import main
from shared.drift import (
    CONTRAST,
    MEAN_INTENSITY,
    PROBABILITY,
    STATISTICS,
    DriftReference,
    batch_statistics,
)
from tests.support.tiny_model import make_tiny_serving_model

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def test_the_cli_writes_the_reference_beside_the_saved_model(tmp_path, capsys):
    from services.trainer.data.dataset import load_images, scan_dataset

    version = make_tiny_serving_model(tmp_path / "serving", 2, scope=True)
    assert main(["drift-reference", "--model", str(version), "--data", str(SAMPLE),
                 "--films", "all"]) == 0
    assert str(reference_path(version)) in capsys.readouterr().out
    reference = DriftReference.from_json(reference_path(version).read_text())
    records = scan_dataset(SAMPLE)
    assert reference.films == len(records) == 40
    assert set(reference.statistics) == set(STATISTICS)  # the screened model gives every one
    # The stored values are the model's own answers on those films, rounded to 6 digits.
    images = load_images(records)
    expected = batch_statistics(images, model_outputs(version, images))
    for name in (PROBABILITY, MEAN_INTENSITY, CONTRAST, "scope_adult"):
        assert np.allclose(reference.statistics[name].values,
                           np.sort([film[name] for film in expected]), rtol=1e-5, atol=1e-7)
        assert np.isclose(reference.statistics[name].shares.sum(), 1.0, atol=1e-5)


def test_the_gate_films_are_the_held_out_patients(tmp_path, capsys):
    from services.trainer.artifact.drift_reference import gate_images

    images, source = gate_images(SAMPLE, "gate")
    everything, _ = gate_images(SAMPLE, "all")
    assert 0 < len(images) < len(everything) == 40
    assert "gate set" in source["films"] and len(source["data_fingerprint"]) == 64


def test_a_folder_that_is_not_an_export_is_refused(tmp_path, capsys):
    assert main(["drift-reference", "--model", str(tmp_path), "--data", str(SAMPLE)]) == 2
    assert "not an exported model version" in capsys.readouterr().err
