"""Choosing the decision threshold: sensitivity first, then the fewest false positives.

A missed pneumonia costs more than a second look at a normal film, so the operating point is the
threshold with the lowest false-positive rate among those whose sensitivity reaches the target
(ties go to the highest threshold). An image is called PNEUMONIA when p >= threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(y_true, p_pneumonia, target_sensitivity: float = 0.95) -> float:
    """The sensitivity-first operating point on labelled scores (y_true: 1 = pneumonia)."""
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
    eligible = tpr >= target_sensitivity - 1e-12
    best_fpr = fpr[eligible].min()
    candidates = thresholds[eligible & (fpr <= best_fpr + 1e-12)]
    return float(np.clip(candidates.max(), 0.0, 1.0))
