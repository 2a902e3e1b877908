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
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(y_true, p_pneumonia, target_sensitivity: float = 0.95, *,
                     for_new_films: bool = True) -> float:
    """The sensitivity-first operating point on labelled scores (y_true: 1 = pneumonia).

    When no threshold reaches the target for new films (too few pneumonia films for it), the
    threshold that catches every fitted pneumonia film.
    """
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(p_pneumonia, dtype=float)
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if len(np.unique(y_true)) != 2:
        raise ValueError("choosing a threshold needs both normal and pneumonia examples")
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); a usable one is a real score.
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    positives = int(y_true.sum())
    sensitivity = tpr * positives / (positives + 1) if for_new_films else tpr
    eligible = sensitivity >= target_sensitivity - 1e-12
    if not eligible.any():
        eligible = tpr >= 1.0 - 1e-12
    best_fpr = fpr[eligible].min()
    candidates = thresholds[eligible & (fpr <= best_fpr + 1e-12)]
    return float(np.clip(candidates.max(), 0.0, 1.0))
