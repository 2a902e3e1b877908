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


def test_the_operating_point_is_chosen_on_validation_films_and_measured_on_the_others(
        tmp_path, monkeypatch):
    from scripts.ensemble_auroc import mean_logit, model_logits, operating_point
    from services.trainer.data.dataset import scan_dataset
    from services.trainer.settings import get_settings
    from tests.support.tiny_model import make_tiny_serving_model
    from tests.trainer.conftest import SAMPLE_DIR

    models = [make_tiny_serving_model(tmp_path / "serving", version, seed=version, image_size=64)
              for version in (1, 2)]
    monkeypatch.setenv("CXR_DATA_DIR", str(SAMPLE_DIR))
    monkeypatch.setenv("CXR_GATE_FRACTION", "0.3")
    get_settings.cache_clear()
    try:
        films = scan_dataset(SAMPLE_DIR)
        result = operating_point(models, films, mean_logit(model_logits(models, films)))
    finally:
        get_settings.cache_clear()
    assert set(result) == {"validation", "gate", "data"}
    assert len({part["threshold"] for part in result.values()}) == 1
    # The threshold meets the target sensitivity on the films it was chosen on.
    assert result["validation"]["sensitivity"] >= 0.95
    assert result["data"]["n"] == 40
    assert 0 < result["gate"]["n"] < 40 and 0 < result["validation"]["n"] < 40
    assert result["gate"]["n"] + result["validation"]["n"] < 40


def test_a_soup_of_identical_versions_scores_as_the_version_does_through_its_signature(tmp_path):
    from scripts.ensemble_auroc import model_logits, soup_logits
    from services.trainer.data.dataset import scan_dataset
    from tests.support.tiny_model import make_tiny_serving_model
    from tests.trainer.conftest import SAMPLE_DIR

    same = [make_tiny_serving_model(tmp_path / "serving", version, seed=3, image_size=64)
            for version in (1, 2)]
    other = make_tiny_serving_model(tmp_path / "serving", 3, seed=4, image_size=64)
    films = scan_dataset(SAMPLE_DIR)[:12]
    served = model_logits([same[0], other], films)
    soups = soup_logits([*same, other], films)
    assert set(soups) == {(str(same[0]), str(same[1])), (str(same[0]), str(other)),
                          (str(same[1]), str(other)), (str(same[0]), str(same[1]), str(other))}
    np.testing.assert_allclose(soups[(str(same[0]), str(same[1]))], served[str(same[0])],
                               atol=1e-4)
    # averaging two different networks gives a third network, not either of them
    mixed = soups[(str(same[0]), str(other))]
    assert not np.allclose(mixed, served[str(same[0])], atol=1e-4)
    assert not np.allclose(mixed, served[str(other)], atol=1e-4)


def test_versions_of_different_input_sizes_make_no_soup(tmp_path):
    from scripts.ensemble_auroc import soup_logits
    from services.trainer.data.dataset import scan_dataset
    from tests.support.tiny_model import make_tiny_serving_model
    from tests.trainer.conftest import SAMPLE_DIR

    models = [make_tiny_serving_model(tmp_path / "serving", 1, image_size=64),
              make_tiny_serving_model(tmp_path / "serving", 2, image_size=96)]
    with pytest.raises(ValueError, match="image_size"):
        soup_logits(models, scan_dataset(SAMPLE_DIR)[:4])
