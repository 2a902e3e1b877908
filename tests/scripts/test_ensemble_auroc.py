import numpy as np
import pytest

from scripts.ensemble_auroc import combinations_auroc, logit


def test_the_mean_logit_can_rank_what_neither_network_ranks_alone():
    y = np.array([0, 0, 0, 1, 1, 1])
    # Each network swaps a different pair; their mean logit orders every film correctly.
    a = np.array([-3.0, -2.0, 0.5, 0.4, 2.0, 3.0])
    b = np.array([-3.0, 1.0, -2.0, 2.0, 0.9, 3.0])
    rows = {tuple(r["models"]): r for r in combinations_auroc(y, {"a": a, "b": b})}
    assert set(rows) == {("a",), ("b",), ("a", "b")}
    assert rows[("a",)]["auroc"] == pytest.approx(8 / 9)
    assert rows[("b",)]["auroc"] == pytest.approx(8 / 9)
    assert rows[("a", "b")]["auroc"] == 1.0
    low, high = rows[("a",)]["auroc_ci"]
    assert low <= 8 / 9 <= high


def test_logit_is_finite_at_the_ends_and_inverts_the_sigmoid():
    p = np.array([0.0, 0.2, 0.5, 1.0])
    values = logit(p)
    assert np.isfinite(values).all()
    assert 1 / (1 + np.exp(-values[1:3])) == pytest.approx(p[1:3])
