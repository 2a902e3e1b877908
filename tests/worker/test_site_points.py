"""The worker's site operating points: read beside the version, re-read when refreshed, kept when
a read fails, applied to the model's answer."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.worker.sites import (
    OperatingPoints,
    OperatingPointUnreadableError,
    apply_operating_point,
)
from shared.operating_point import Calibration, OperatingPoint, site_operating_point_key
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult
from shared.storage import LocalStorage

MODEL = "cxr-pneumonia"


def point(site: str = "north", threshold: float = 0.4, slope: float = 1.0,
          intercept: float = 0.0) -> OperatingPoint:
    return OperatingPoint(site=site, model_name=MODEL, model_version=3, calibration=Calibration(
        method="platt", slope=slope, intercept=intercept), threshold=threshold,
        target_sensitivity=0.95, model_threshold=0.7, fitted_at=datetime(2026, 5, 1, tzinfo=UTC),
        data_fingerprint="ef" * 32, n=10, n_pneumonia=5, n_normal=5)


def model_result(p: float = 0.6, threshold: float = 0.7) -> PredictionResult:
    return PredictionResult(
        label="PNEUMONIA" if p >= threshold else "NORMAL", pneumonia_probability=p,
        class_probabilities=ClassProbabilities(normal=1 - p, bacterial=p * 0.75, viral=p * 0.25),
        threshold=threshold, model=ModelRef(name=MODEL, version=3))


def test_the_site_point_gives_the_calibrated_probability_threshold_and_label():
    result = apply_operating_point(model_result(0.6), "north", point(threshold=0.4, slope=2.0,
                                                                      intercept=0.5))
    expected = 1 / (1 + math.exp(-(2.0 * math.log(0.6 / 0.4) + 0.5)))
    assert result.pneumonia_probability == pytest.approx(expected)
    assert (result.threshold, result.label, result.subtype) == (0.4, "PNEUMONIA", "bacterial")
    classes = result.class_probabilities
    assert classes.bacterial / classes.viral == pytest.approx(3.0)
    assert classes.normal == pytest.approx(1 - expected)
    assert result.operating_point.model_dump() == {
        "site": "north", "threshold": 0.4, "calibrated_by": "site",
        "fitted_at": datetime(2026, 5, 1, tzinfo=UTC)}


def test_without_a_site_point_the_models_own_answers():
    result = apply_operating_point(model_result(0.6, 0.7), "default", None)
    assert (result.pneumonia_probability, result.threshold, result.label) == (0.6, 0.7, "NORMAL")
    assert result.operating_point.calibrated_by == "model"
    assert result.operating_point.site == "default"


def test_points_are_read_per_version_and_site_and_reread_after_the_refresh(tmp_path):
    storage = LocalStorage(tmp_path)
    points = OperatingPoints(storage, MODEL, refresh_s=0)
    assert points.get(3, "north") is None  # no file: the model's own point
    storage.put(site_operating_point_key(MODEL, 3, "north"), point(threshold=0.4).to_json())
    assert points.get(3, "north").threshold == 0.4
    assert points.get(4, "north") is None  # another version has its own points
    assert points.get(3, "../north") is None  # not a site name: never a path
    storage.put(site_operating_point_key(MODEL, 3, "north"), point(threshold=0.2).to_json())
    assert points.get(3, "north").threshold == 0.2


def test_a_cached_point_is_kept_until_the_refresh_and_when_a_read_fails(tmp_path):
    storage = LocalStorage(tmp_path)
    key = site_operating_point_key(MODEL, 3, "north")
    storage.put(key, point(threshold=0.4).to_json())
    cached = OperatingPoints(storage, MODEL, refresh_s=3600)
    assert cached.get(3, "north").threshold == 0.4
    storage.put(key, point(threshold=0.1).to_json())
    assert cached.get(3, "north").threshold == 0.4  # not yet re-read

    eager = OperatingPoints(storage, MODEL, refresh_s=0)
    assert eager.get(3, "north").threshold == 0.1
    storage.put(key, b"{not json")
    assert eager.get(3, "north").threshold == 0.1  # the last good point keeps answering
    with pytest.raises(OperatingPointUnreadableError) as raised:
        OperatingPoints(storage, MODEL, refresh_s=0).get(3, "north")
    assert raised.value.transient  # retried, never answered at the wrong point
    storage.put(key, point(site="south").to_json())
    with pytest.raises(OperatingPointUnreadableError, match="south"):
        OperatingPoints(storage, MODEL, refresh_s=0).get(3, "north")
