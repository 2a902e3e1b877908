"""Metrics in the evaluate JSON format.

`compute_metrics` is the one place the numbers that gate a model are computed: AUROC with a seeded,
class-stratified bootstrap 95% interval, the confusion at the model's threshold and the rates
derived from it, binary ECE (see `calibration.ECE_BINS`), and the bacterial-vs-viral AUROC among
pneumonia images whose subtype is known. An undefined rate (no cases in its denominator) is null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from services.trainer.evaluation.calibration import ECE_BINS, expected_calibration_error

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
METRIC_KEYS = (
    "n", "n_pneumonia", "n_normal", "auroc", "auroc_ci", "accuracy", "sensitivity", "specificity",
    "precision", "npv", "f1", "brier", "ece", "ece_bins", "threshold", "confusion", "subtype_auroc",
    "n_subtyped",
)


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def _auroc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    if len(np.unique(y_true)) < 2:
        return None
    return float(roc_auc_score(y_true, scores))


def bootstrap_auroc_ci(y_true, scores, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> list[float] | None:
    """Percentile interval of AUROC over resamples drawn with replacement within each class."""
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    positives, negatives = np.flatnonzero(y_true == 1), np.flatnonzero(y_true == 0)
    if len(positives) == 0 or len(negatives) == 0:
        return None
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(len(positives), int), np.zeros(len(negatives), int)]
    values = np.empty(resamples)
    for i in range(resamples):
        picked = np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
        values[i] = roc_auc_score(labels, scores[picked])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def viral_scores(subtypes: Sequence[str | None],
                 class_probabilities) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Among films of known subtype: which they are (`known` mask), 1 for viral, and the score
    p_viral / (p_bacterial + p_viral) the subtype AUROCs rank by."""
    subtypes = np.asarray([s if s in ("bacterial", "viral") else "" for s in subtypes])
    known = subtypes != ""
    probs = np.asarray(class_probabilities, dtype=float)[known]
    is_viral = (subtypes[known] == "viral").astype(int)
    return known, is_viral, probs[:, 2] / np.maximum(probs[:, 1] + probs[:, 2], 1e-12)


def subtype_auroc(subtypes: Sequence[str | None], class_probabilities) -> tuple[float | None, int]:
    """Viral-vs-bacterial AUROC (score p_viral / (p_bacterial + p_viral)) and how many counted."""
    known, is_viral, score = viral_scores(subtypes, class_probabilities)
    return _auroc(is_viral, score), int(known.sum())


def outer_band_mask(height: int, width: int, band: float) -> np.ndarray:
    """[H, W] booleans: the pixels within `band` (a share of the shorter side) of the edge."""
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    depth = np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols))
    return depth < band * min(height, width)


def outer_band_share(heatmaps: np.ndarray, band: float) -> np.ndarray:
    """Per heatmap [N, H, W], the share of its mass within `band` (a share of the side) of the edge.

    A heatmap spread evenly over the film gives the band's share of the area; one that stays on
    the lungs gives less. An all-zero heatmap gives NaN.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    outer = outer_band_mask(*heatmaps.shape[1:3], band)
    total = heatmaps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return heatmaps[:, outer].sum(axis=1) / total


def compute_metrics(y_true, p_pneumonia, threshold: float,
                    subtypes: Sequence[str | None] | None = None, *, class_probabilities=None,
                    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> dict:
    """The evaluate JSON dict for binary labels (1 = pneumonia) scored by p(pneumonia).

    Rates come from sklearn's confusion matrix: sensitivity tp/(tp+fn), specificity tn/(tn+fp),
    precision tp/(tp+fp), npv tn/(tn+fn).

    `subtypes` ("bacterial" / "viral" / None per image) with `class_probabilities` [N, 3] adds the
    bacterial-vs-viral AUROC among pneumonia images of known subtype.
    """
    y_true = np.asarray(y_true, dtype=int)
    p = np.asarray(p_pneumonia, dtype=float)
    if y_true.ndim != 1 or y_true.shape != p.shape or len(y_true) == 0:
        raise ValueError("compute_metrics needs equal-length, non-empty label and score vectors")
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, predicted, labels=[0, 1]).ravel())
    metrics = {
        "n": int(len(y_true)),
        "n_pneumonia": int(y_true.sum()),
        "n_normal": int(len(y_true) - y_true.sum()),
        "auroc": _auroc(y_true, p),
        "auroc_ci": bootstrap_auroc_ci(y_true, p, resamples=bootstrap_resamples, seed=seed),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(f1_score(y_true, predicted, zero_division=0.0)) if tp + fp + fn else None,
        "brier": float(brier_score_loss(y_true, p, pos_label=1)),
        "ece": expected_calibration_error(y_true, p),
        "ece_bins": ECE_BINS,
        "threshold": float(threshold),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "subtype_auroc": None,
        "n_subtyped": 0,
    }
    if subtypes is not None and class_probabilities is not None:
        pneumonia = y_true == 1
        chosen = [s for s, keep in zip(subtypes, pneumonia, strict=True) if keep]
        probs = np.asarray(class_probabilities, dtype=float)[pneumonia]
        metrics["subtype_auroc"], metrics["n_subtyped"] = subtype_auroc(chosen, probs)
    return metrics
