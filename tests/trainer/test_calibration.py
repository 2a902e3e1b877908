"""Temperature scaling recovers a known temperature; ECE drops after scaling."""

import numpy as np
import pytest

from services.trainer.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from shared.contract import UNKNOWN_SUBTYPE


def _synthetic(true_temperature: float, n: int = 20000, seed: int = 0):
    """Labels drawn from softmax(z); the 'network' reports z * T, i.e. over-confident for T > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(n, 3))
    probs = softmax(z)
    labels = np.array([rng.choice(3, p=row) for row in probs])
    return z * true_temperature, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 3.0])
def test_recovers_a_known_temperature(true_temperature):
    logits, labels = _synthetic(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.06)


def test_scaling_lowers_the_pneumonia_ece():
    logits, labels = _synthetic(3.0, seed=1)
    y_pneumonia = (labels > 0).astype(int)
    before = expected_calibration_error(y_pneumonia, 1 - softmax(logits)[:, 0])
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(y_pneumonia, 1 - softmax(logits, temperature)[:, 0])
    assert after < before / 2
    assert after < 0.02


def test_unknown_subtype_counts_through_the_pneumonia_mass():
    logits, labels = _synthetic(2.0, seed=2)
    # Hiding the subtype of every pneumonia still leaves the normal-vs-pneumonia signal.
    hidden = np.where(labels > 0, UNKNOWN_SUBTYPE, 0)
    assert fit_temperature(logits, hidden) == pytest.approx(2.0, rel=0.15)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 3)), [0, 1])
