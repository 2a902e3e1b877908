"""Choosing the decision threshold: sensitivity first, then the fewest false positives.

A missed pneumonia costs more than a second look at a normal film, so the operating point is the
threshold with the lowest false-positive rate among those whose sensitivity reaches the target
(ties go to the highest threshold). An image is called PNEUMONIA when p >= threshold.

The sensitivity that counts is the one expected on the next film, not on the films the threshold
was fitted to. Placing the threshold at the k-th lowest of n pneumonia scores catches a new
pneumonia film from the same population with probability (n + 1 - k) / (n + 1) (exchangeability;
the split-conformal argument), that is tp / (n + 1) where tp films of the n are caught; the
fitted films' own tp / n overstates it, and a threshold chosen on it falls short of the target
on new films about half the time. `for_new_films=False` gives the in-sample rule.

That rule holds the target on average over acceptance sets; on any one set's threshold the
sensitivity on later films still falls short about half the time, more so the fewer pneumonia
films it was fitted on. With `confidence` c the rule holds the target for the threshold in hand,
with probability c over the draw of the fitted films. With the threshold at the (m + 1)-th lowest
of n pneumonia scores (m fitted films missed), the share of new pneumonia films it misses is
above 1 - target with probability P(Binomial(n, 1 - target) <= m) (the miss share at an order
statistic is Beta(m + 1, n - m) distributed; exchangeability again). The threshold may therefore
miss m fitted films only while that probability is at most 1 - c: a one-sided binomial
(Clopper-Pearson) bound, the training-conditional form of the conformal guarantee. It costs
specificity, and below `pneumonia_films_needed(target, c)` pneumonia films no cut-off meets it,
not even one that misses none.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom
from sklearn.metrics import roc_curve


def pneumonia_films_needed(target_sensitivity: float, confidence: float) -> int:
    """The fewest pneumonia films on which missing none meets the target with `confidence`."""
    _check(target_sensitivity, confidence)
    if target_sensitivity >= 1.0:
        raise ValueError("no finite number of films bounds a target sensitivity of 1")
    return math.ceil(math.log(1.0 - confidence) / math.log(target_sensitivity) - 1e-12)


def _check(target_sensitivity: float, confidence: float | None) -> None:
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def choose_threshold(y_true, p_pneumonia, target_sensitivity: float = 0.95, *,
                     for_new_films: bool = True, confidence: float | None = None) -> float:
    """The sensitivity-first operating point on labelled scores (y_true: 1 = pneumonia).

    `confidence` (see the module's note) replaces the expected-sensitivity rule by its bound.
    When no threshold reaches the target (too few pneumonia films for it), the threshold that
    catches every fitted pneumonia film.
    """
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(p_pneumonia, dtype=float)
    _check(target_sensitivity, confidence)
    if len(np.unique(y_true)) != 2:
        raise ValueError("choosing a threshold needs both normal and pneumonia examples")
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); a usable one is a real score.
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    positives = int(y_true.sum())
    if confidence is not None:
        missed = np.rint((1.0 - tpr) * positives).astype(int)
        eligible = binom.cdf(missed, positives, 1.0 - target_sensitivity) <= 1.0 - confidence
    else:
        sensitivity = tpr * positives / (positives + 1) if for_new_films else tpr
        eligible = sensitivity >= target_sensitivity - 1e-12
    if not eligible.any():
        eligible = tpr >= 1.0 - 1e-12
    best_fpr = fpr[eligible].min()
    candidates = thresholds[eligible & (fpr <= best_fpr + 1e-12)]
    return float(np.clip(candidates.max(), 0.0, 1.0))
