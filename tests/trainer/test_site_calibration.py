"""Site operating points: calibration and threshold fits against hand-computed cases, and
cross-fitting that never measures an image with a point fitted on it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from services.trainer.data.records import XrayRecord
from services.trainer.data.site_records import read_site_records
from services.trainer.evaluation.site_calibration import (
    apply_calibration,
    cross_fit,
    decision_figures,
    fit_platt,
    fit_point,
    patient_groups,
    site_acceptance,
    split_halves,
)
from shared.operating_point import Calibration, OperatingPoint
from tests.shared.xray_files import gradient, jpeg_bytes


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_platt_fit_matches_the_closed_form_on_two_score_levels():
    # Two logit levels, -1 and +1: the maximum-likelihood fit reproduces each level's observed
    # rate, 1/5 and 3/4, so a = (logit(3/4) - logit(1/5)) / 2 and b = (logit(3/4) + logit(1/5)) / 2.
    p = [sigmoid(-1)] * 5 + [sigmoid(1)] * 4
    y = [1, 0, 0, 0, 0] + [1, 1, 1, 0]
    calibration = fit_platt(p, y)
    assert calibration.method == "platt" and calibration.refused is None
    assert calibration.slope == pytest.approx((logit(0.75) - logit(0.2)) / 2, abs=1e-4)
    assert calibration.intercept == pytest.approx((logit(0.75) + logit(0.2)) / 2, abs=1e-4)
    assert apply_calibration(calibration, [sigmoid(-1), sigmoid(1)]) == pytest.approx(
        [0.2, 0.75], abs=1e-4)
    assert calibration.apply(sigmoid(1)) == pytest.approx(0.75, abs=1e-4)


def test_a_platt_fit_that_runs_to_its_bound_is_refused():
    # Perfectly separated scores: the likelihood grows without end as the slope grows.
    calibration = fit_platt([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])
    assert calibration.method == "identity"
    assert "bound" in calibration.refused
    assert apply_calibration(calibration, [0.3]) == pytest.approx([0.3])


def test_threshold_is_sensitivity_first_then_fewest_false_positives():
    p = [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]
    y = [0, 0, 1, 1, 0, 1]
    # Every pneumonia caught: the cut must sit at 0.3 (the normal at 0.7 is then a false positive).
    assert fit_point(p, y, 1.0, calibrate=False).threshold == pytest.approx(0.3)
    # A target of 1/2 on new films: two of three caught (2/4) suffice; 0.6 and 0.3 both reach it
    # with one false positive; the higher wins.
    assert fit_point(p, y, 1 / 2, calibrate=False).threshold == pytest.approx(0.6)
    # 2/3 on new films needs all three caught (3/4; two give 2/4): 0.3
    assert fit_point(p, y, 2 / 3, calibrate=False).threshold == pytest.approx(0.3)


def test_the_threshold_is_on_the_calibrated_scale():
    p = [sigmoid(-1)] * 5 + [sigmoid(1)] * 4
    y = [1, 0, 0, 0, 0] + [1, 1, 1, 0]
    fitted = fit_point(p, y, 1.0)
    # Catching every pneumonia needs the lower level: the threshold is its calibrated value, 1/5.
    assert fitted.threshold == pytest.approx(0.2, abs=1e-4)


def records(names: list[tuple[str, str]]) -> list[XrayRecord]:
    from services.trainer.data.naming import parse_file_name

    return [XrayRecord(path=Path(name), label=label, subtype=None,  # type: ignore[arg-type]
                       patient=parse_file_name(name).patient) for name, label in names]


def test_patients_and_identical_images_stay_in_one_half():
    recs = records([("person1_bacteria_1.jpeg", "PNEUMONIA"), ("person1_bacteria_2.jpeg",
                    "PNEUMONIA"), ("person2_virus_3.jpeg", "PNEUMONIA"),
                    ("IM-0001-0001.jpeg", "NORMAL"), ("IM-0002-0001.jpeg", "NORMAL")])
    recs[2].dup_group = recs[3].dup_group = "dup-a"  # same pixels under two patients' names
    groups = patient_groups(recs)
    assert groups[0] == groups[1]
    assert groups[2] == groups[3] != groups[0]
    assert len(set(groups)) == 3


def site_like(n_patients: int = 60, seed: int = 3):
    """Scores of a model that ranks well but is over-confident; two films per patient."""
    rng = np.random.default_rng(seed)
    y_patient = rng.integers(0, 2, n_patients)
    y = np.repeat(y_patient, 2)
    z = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, len(y))
    p = 1 / (1 + np.exp(-3 * z))
    groups = [f"patient{i // 2}" for i in range(len(y))]
    return y, p, groups


def test_cross_fitting_never_measures_an_image_with_a_point_fitted_on_it():
    y, p, groups = site_like()
    halves = split_halves(y, groups)
    by_patient = {}
    for group, half in zip(groups, halves, strict=True):
        assert by_patient.setdefault(group, half) == half  # a patient never spans both halves
    cross = cross_fit(p, y, halves, 0.95)
    for half, fitted_on in enumerate(cross.fitted_on):
        measured = np.flatnonzero(halves == half)
        assert not set(fitted_on) & set(measured)
        assert len(fitted_on) + len(measured) == len(y)
    # What an image is measured with does not depend on its own label (or its half's): flipping
    # every label in half 0 leaves half 0's calibrated scores and thresholds as they were.
    flipped = y.copy()
    flipped[halves == 0] = 1 - flipped[halves == 0]
    again = cross_fit(p, flipped, halves, 0.95)
    in_half = halves == 0
    assert np.array_equal(again.p_site[in_half], cross.p_site[in_half])
    assert np.array_equal(again.threshold[in_half], cross.threshold[in_half])
    assert not np.array_equal(again.p_site[~in_half], cross.p_site[~in_half])


def test_site_acceptance_reports_cross_fitted_figures_and_fits_on_everything():
    y, p, groups = site_like()
    result = site_acceptance("north", y, p, 0.5, groups, fingerprint="f" * 64,
                             bootstrap_resamples=100)
    report, point = result.report, result.point
    assert point.site == "north" and point.n == len(y) and point.calibration.method == "platt"
    assert point.calibration.slope < 1  # over-confident scores are softened
    assert report["ece_after"] < report["ece_before"]
    # The site figures are those of the pooled held-out decisions, not of the final fit.
    assert report["site_threshold"]["confusion"] == decision_figures(
        y, result.cross.decisions)["confusion"]
    assert sum(report["site_threshold"]["confusion"].values()) == len(y)
    assert report["model_threshold"]["confusion"] == decision_figures(
        y, (p >= 0.5).astype(int))["confusion"]
    low, high = report["auroc_ci"]
    assert low <= report["auroc"] <= high
    OperatingPoint.model_validate(report["operating_point"])
    # The report repeats the cross-fit over other patient splits; split 0 is the table's own.
    assert report["split_spread"]["splits"] == 100
    spread_ = report["split_spread"]["sensitivity"]
    assert spread_["p5"] <= spread_["median"] <= spread_["p95"]
    one = site_acceptance("north", y, p, 0.5, groups, fingerprint="f" * 64,
                          bootstrap_resamples=10, spread_splits=1)
    for name in ("sensitivity", "specificity"):
        assert one.report["split_spread"][name]["median"] == pytest.approx(
            one.report["site_threshold"][name])


def test_site_acceptance_uses_identity_when_the_fit_is_refused():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 3)
    p = np.where(y == 1, 0.9, 0.2) + np.linspace(0, 0.05, len(y))  # separable
    groups = [f"p{i}" for i in range(len(y))]
    result = site_acceptance("south", y, p, 0.5, groups, fingerprint="0" * 64,
                             bootstrap_resamples=100)
    assert result.point.calibration == Calibration(refused=result.report["calibration_refused"])
    assert "bound" in result.report["calibration_refused"]
    assert result.report["ece_after"] == pytest.approx(result.report["ece_before"])


def test_a_confident_site_threshold_is_fitted_and_recorded_as_asked():
    y, p, groups = site_like(n_patients=400, seed=5)
    halves = split_halves(y, groups)
    assert min(int(y[halves != h].sum()) for h in (0, 1)) >= 59  # enough for 95% / 95%
    average = site_acceptance("east", y, p, 0.5, groups, fingerprint="e" * 64,
                              bootstrap_resamples=10)
    confident = site_acceptance("east", y, p, 0.5, groups, fingerprint="e" * 64,
                                confidence=0.95, bootstrap_resamples=10)
    # Each half's threshold is the bound's choice on the other half, and never above the
    # average rule's: holding the target with confidence catches at least as many films.
    for fitted_on, fit in zip(confident.cross.fitted_on, confident.cross.fits, strict=True):
        assert fit.threshold == fit_point(p[fitted_on], y[fitted_on], 0.95, True, 0.95).threshold
    assert all(c.threshold <= a.threshold for c, a in zip(
        confident.cross.fits, average.cross.fits, strict=True))
    assert confident.point.threshold < average.point.threshold
    assert confident.report["site_threshold"]["sensitivity"] >= \
        average.report["site_threshold"]["sensitivity"]
    assert confident.point.sensitivity_confidence == 0.95
    assert average.point.sensitivity_confidence is None
    assert confident.report["threshold_note"] is None
    # A small set cannot hold the bound: the report says how many films it would need, and
    # whether the point fitted on every film holds it.
    y, p, groups = site_like()
    small = site_acceptance("east", y, p, 0.5, groups, fingerprint="e" * 64, confidence=0.95,
                            bootstrap_resamples=10)
    note = small.report["threshold_note"]
    assert "needs 59 pneumonia films" in note and "without reaching that confidence" in note
    total = int(y.sum())
    assert (f"the point fitted on all {total} reaches it" if total >= 59
            else f"nor does the point fitted on all {total}") in note
    fewer = np.flatnonzero(y == 1)[:40]  # 40 pneumonia films: not even the whole set holds it
    kept = np.concatenate([fewer, np.flatnonzero(y == 0)])
    tiny = site_acceptance("east", y[kept], p[kept], 0.5, [groups[i] for i in kept],
                           fingerprint="e" * 64, confidence=0.95, bootstrap_resamples=10)
    assert "nor does the point fitted on all 40" in tiny.report["threshold_note"]


def test_split_variation_repeats_the_cross_fit_over_patient_splits():
    from bench.site_rules import split_variation

    y, p, groups = site_like(n_patients=400, seed=5)
    rows = {c: split_variation(p, y, groups, 0.95, c, splits=5, min_specificity=0.9)
            for c in (None, 0.95)}
    # Split 0 is the one site-calibrate measures: one split gives exactly its figures.
    decisions = cross_fit(p, y, split_halves(y, groups, 0), 0.95, True, 0.95).decisions
    one = split_variation(p, y, groups, 0.95, 0.95, splits=1, min_specificity=0.9)
    assert one["sensitivity"]["median"] == pytest.approx(decisions[y == 1].mean())
    assert one["specificity"]["median"] == pytest.approx(1 - decisions[y == 0].mean())
    # Other splits fit other thresholds.
    assert rows[0.95]["sensitivity"]["p5"] != rows[0.95]["sensitivity"]["p95"]
    # The confident rule never catches fewer pneumonia films than the average one.
    assert rows[0.95]["sensitivity"]["median"] >= rows[None]["sensitivity"]["median"]
    assert rows[0.95]["share_sensitivity_below_target"] <= \
        rows[None]["share_sensitivity_below_target"]
    for row in rows.values():
        assert row["splits"] == 5
        assert 0 <= row["share_both_met"] <= 1 - max(row["share_sensitivity_below_target"],
                                                     row["share_specificity_below_floor"])


def test_a_site_csv_names_files_labels_and_patients(tmp_path):
    (tmp_path / "img").mkdir()
    for low, name in enumerate(("a.jpeg", "b.jpeg", "c.jpeg")):
        (tmp_path / "img" / name).write_bytes(jpeg_bytes(gradient(low=low * 20)))
    (tmp_path / "site.csv").write_text(
        "file,label,patient\nimg/a.jpeg,PNEUMONIA,p1\nimg/b.jpeg,0,p1\nimg/c.jpeg,normal,\n")
    recs = read_site_records(tmp_path / "site.csv")
    assert [(r.path.name, r.label, r.patient) for r in recs] == [
        ("a.jpeg", "PNEUMONIA", "p1"), ("b.jpeg", "NORMAL", "p1"), ("c.jpeg", "NORMAL", "c")]


def report(sensitivity: float, specificity: float) -> dict:
    return {"site_threshold": {"sensitivity": sensitivity, "specificity": specificity}}


def test_the_site_gate_refuses_when_one_site_fails_its_floor_or_regresses():
    from services.trainer.registry.site_gate import SiteGate

    gate = SiteGate(min_sensitivity=0.95, min_specificity=0.85, max_sensitivity_drop=0.02,
                    max_specificity_drop=0.03)
    north = gate.judge("north", report(0.97, 0.90))
    south = gate.judge("south", report(0.97, 0.84))  # specificity under the floor
    assert all(c.passed for c in north)
    assert [c.name for c in south if not c.passed] == ["site.south.specificity_floor"]
    # Above the floors but worse than the champion at the same site by more than allowed.
    east = gate.judge("east", report(0.96, 0.88), champion=report(0.96, 0.92))
    assert [c.name for c in east if not c.passed] == ["site.east.specificity_regression"]
    assert all(c.passed for c in gate.judge("east", report(0.96, 0.90),
                                            champion=report(0.97, 0.92)))


def test_site_settings_parse_maps_and_refuse_bad_site_names():
    from pydantic import ValidationError

    from services.trainer.settings import TrainerSettings
    from shared.settings import SharedSettings

    settings = SharedSettings(site_clients="alice:north, bob:south", site_ae_titles="MOD1:north")
    assert settings.site_of_client("alice") == "north"
    assert settings.site_of_client("carol") == "default"
    assert settings.site_of_ae_title("MOD1  ") == "north"
    assert TrainerSettings(site_acceptance_sets="north:/data/north,south:s.csv").site_sets == {
        "north": "/data/north", "south": "s.csv"}
    with pytest.raises(ValidationError):
        SharedSettings(site_clients="alice:../etc")
    with pytest.raises(ValidationError):
        TrainerSettings(site_acceptance_sets="north")
