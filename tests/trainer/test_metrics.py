"""Metric functions against cases computed by hand."""

import numpy as np
import pytest

from services.trainer.evaluation.calibration import expected_calibration_error
from services.trainer.evaluation.metrics import (
    METRIC_KEYS,
    bootstrap_auroc_ci,
    compute_metrics,
)
from services.trainer.evaluation.thresholds import choose_threshold, pneumonia_films_needed

# Four pneumonia (1) and four normal (0) images; at threshold 0.35 the confusion is
# tp 3 (0.9, 0.8, 0.7), fn 1 (0.3), fp 2 (0.6, 0.4), tn 2 (0.2, 0.1).
Y = [1, 1, 1, 0, 0, 0, 0, 1]
P = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7]


def test_confusion_and_rates_by_hand():
    m = compute_metrics(Y, P, 0.35, bootstrap_resamples=50)
    assert m["confusion"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert m["n"] == 8 and m["n_pneumonia"] == 4 and m["n_normal"] == 4
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    # 16 positive/negative pairs; only 0.3 loses, to 0.6 and 0.4: AUROC = 14/16.
    assert m["auroc"] == pytest.approx(14 / 16)
    assert m["threshold"] == 0.35
    assert set(METRIC_KEYS) <= set(m)


def test_threshold_is_inclusive():
    assert compute_metrics([1, 0], [0.5, 0.2], 0.5, bootstrap_resamples=10)["confusion"]["tp"] == 1


def test_auroc_of_known_orderings_and_its_interval():
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    ranked = np.linspace(0.0, 1.0, 40)
    assert compute_metrics(y, ranked, 0.5, bootstrap_resamples=20)["auroc"] == 1.0
    assert compute_metrics(y, ranked[::-1], 0.5, bootstrap_resamples=20)["auroc"] == 0.0
    assert bootstrap_auroc_ci(y, ranked, resamples=50) == [1.0, 1.0]


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    scores = 1.0 / (1.0 + np.exp(-(y * 1.6 - 0.8 + rng.normal(0, 1.2, 300))))
    m = compute_metrics(y, scores, 0.5, bootstrap_resamples=300)
    low, high = m["auroc_ci"]
    assert low < m["auroc"] < high
    assert 0.0 < high - low < 0.2
    assert bootstrap_auroc_ci(y, scores, resamples=300) == m["auroc_ci"]
    assert bootstrap_auroc_ci(y, scores, resamples=300, seed=2) != m["auroc_ci"]


def test_undefined_rates_are_null_with_one_class():
    m = compute_metrics([1, 1, 1], [0.9, 0.2, 0.7], 0.5, bootstrap_resamples=10)
    assert m["auroc"] is None and m["auroc_ci"] is None
    assert m["specificity"] is None and m["sensitivity"] == pytest.approx(2 / 3)
    assert m["npv"] == 0.0  # one negative call, and it was wrong


def test_ece_known_cases():
    # Perfectly calibrated single bin.
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == pytest.approx(0.0)
    # 0.9 predicted, 6 of 10 positive.
    assert expected_calibration_error([1] * 6 + [0] * 4, [0.9] * 10) == pytest.approx(0.3)
    # Two half-weighted bins with errors 0.1 and 0.2.
    y = [0] * 5 + [1] * 5
    p = [0.1] * 5 + [0.8] * 5
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)
    # p = 1.0 falls in the last bin instead of overflowing.
    assert expected_calibration_error([1, 1], [1.0, 1.0]) == pytest.approx(0.0)


def test_subtype_auroc_among_pneumonia_of_known_subtype():
    y = [0, 1, 1, 1, 1, 1]
    subtypes = [None, "bacterial", "bacterial", "viral", "viral", None]
    probs = np.array([
        [0.8, 0.1, 0.1],
        [0.1, 0.8, 0.1],   # bacterial, viral share 1/9
        [0.2, 0.5, 0.3],   # bacterial, viral share 0.375
        [0.1, 0.3, 0.6],   # viral, share 2/3
        [0.1, 0.6, 0.3],   # viral, share 1/3 - ranks below the second bacterial
        [0.0, 0.5, 0.5],   # unknown subtype: not counted
    ])
    m = compute_metrics(y, probs[:, 1] + probs[:, 2], 0.5, subtypes, class_probabilities=probs,
                        bootstrap_resamples=10)
    assert m["n_subtyped"] == 4
    assert m["subtype_auroc"] == pytest.approx(3 / 4)
    without = compute_metrics(y, probs[:, 1] + probs[:, 2], 0.5, bootstrap_resamples=10)
    assert without["subtype_auroc"] is None


def test_threshold_selection_sensitivity_first():
    positives = [0.95, 0.9, 0.85, 0.6, 0.3]
    negatives = [0.8, 0.5, 0.4, 0.2, 0.1]
    y = [1] * 5 + [0] * 5
    p = positives + negatives
    fitted = {"for_new_films": False}
    assert choose_threshold(y, p, 0.8, **fitted) == pytest.approx(0.6)   # 4/5, one false pos.
    assert choose_threshold(y, p, 1.0, **fitted) == pytest.approx(0.3)   # 5/5, three false pos.
    assert choose_threshold(y, p, 0.6, **fitted) == pytest.approx(0.85)  # 3/5, none false


def test_threshold_for_new_films_counts_one_more_pneumonia():
    # Expected sensitivity on a new film is tp / (n + 1) = tp / 6 for these five pneumonia films
    positives = [0.95, 0.9, 0.85, 0.6, 0.3]
    negatives = [0.8, 0.5, 0.4, 0.2, 0.1]
    y = [1] * 5 + [0] * 5
    p = positives + negatives
    assert choose_threshold(y, p, 0.6) == pytest.approx(0.6)   # 3/6 = 0.5 too few, 4/6 enough
    assert choose_threshold(y, p, 0.5) == pytest.approx(0.85)  # 3/6 = 0.5 enough
    assert choose_threshold(y, p, 0.8) == pytest.approx(0.3)   # 4/6 too few, 5/6 enough
    # 0.9 is out of reach with five films (5/6 < 0.9): every fitted pneumonia film is caught
    assert choose_threshold(y, p, 0.9) == pytest.approx(0.3)


def test_threshold_for_new_films_on_a_large_sample():
    # 100 pneumonia films scored 0.01 .. 1.00: at a target of 0.95, tp / 101 >= 0.95 needs
    # tp >= 95.95, so 96 caught (threshold 0.05), where the fitted rule stops at 95 (0.06)
    y = [1] * 100 + [0] * 10
    p = [i / 100 for i in range(1, 101)] + [0.0] * 10
    assert choose_threshold(y, p, 0.95) == pytest.approx(0.05)
    assert choose_threshold(y, p, 0.95, for_new_films=False) == pytest.approx(0.06)


def test_threshold_with_confidence_bounds_the_misses_binomially():
    # 100 pneumonia films scored 0.01 .. 1.00, target 0.95. Missing m fitted films is allowed while
    # P(Binomial(100, 0.05) <= m) <= 1 - confidence; that probability is 0.0059 (m = 0),
    # 0.0371 (m = 1), 0.1183 (m = 2), 0.4360 (m = 4), 0.6160 (m = 5).
    y = [1] * 100 + [0] * 10
    p = [i / 100 for i in range(1, 101)] + [0.0] * 10
    assert choose_threshold(y, p, 0.95, confidence=0.95) == pytest.approx(0.02)  # m = 1
    assert choose_threshold(y, p, 0.95, confidence=0.90) == pytest.approx(0.02)  # m = 1
    assert choose_threshold(y, p, 0.95, confidence=0.99) == pytest.approx(0.01)  # m = 0
    assert choose_threshold(y, p, 0.95, confidence=0.50) == pytest.approx(0.05)  # m = 4
    # the bound decides, not the expected-sensitivity rule (which stops at 0.05 for any confidence)
    assert choose_threshold(y, p, 0.95) == pytest.approx(0.05)


def test_pneumonia_films_needed_for_a_confident_threshold():
    # 0.95 ** 59 = 0.0485 <= 0.05 < 0.95 ** 58 = 0.0510
    assert pneumonia_films_needed(0.95, 0.95) == 59
    assert pneumonia_films_needed(0.9, 0.9) == 22  # 0.9 ** 22 = 0.0985, 0.9 ** 21 = 0.1094
    # with fewer films no threshold meets the bound: every fitted pneumonia film is caught
    y = [1] * 58 + [0] * 5
    p = [(i + 1) / 100 for i in range(58)] + [0.0] * 5
    assert choose_threshold(y, p, 0.95, confidence=0.95) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        pneumonia_films_needed(1.0, 0.95)
    with pytest.raises(ValueError):
        choose_threshold(y, p, 0.95, confidence=1.0)


def test_threshold_ties_go_to_the_highest():
    # Thresholds 0.7 (2/3 caught) and 0.6 (3/3) both admit one false positive (0.8): 0.7 wins at a
    # target of 0.6, and 0.6 when every pneumonia must be caught.
    y = [1, 1, 1, 0, 0]
    p = [0.9, 0.7, 0.6, 0.8, 0.1]
    fitted = {"for_new_films": False}
    assert choose_threshold(y, p, 0.3, **fitted) == pytest.approx(0.9)
    assert choose_threshold(y, p, 0.6, **fitted) == pytest.approx(0.7)
    assert choose_threshold(y, p, 1.0, **fitted) == pytest.approx(0.6)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError):
        choose_threshold([1, 1], [0.2, 0.4])
