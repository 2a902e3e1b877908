"""Metrics in the evaluate JSON format, and the evaluation of an exported SavedModel.

`compute_metrics` is the one place the numbers that gate a model are computed: AUROC with a seeded,
class-stratified bootstrap 95% interval, the confusion at the model's threshold and the rates
derived from it, binary ECE (see `calibration.ECE_BINS`), and the bacterial-vs-viral AUROC among
pneumonia images whose subtype is known. An undefined rate (no cases in its denominator) is null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from services.trainer.calibration import ECE_BINS, expected_calibration_error
from shared.contract import (
    CLASS_PROBABILITIES,
    INPUT_NAME,
    PNEUMONIA_PROBABILITY,
    SERVING_SIGNATURE,
    THRESHOLD,
)
from shared.operating_point import OperatingPoint

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


def outer_band_share(heatmaps: np.ndarray, band: float) -> np.ndarray:
    """Per heatmap [N, H, W], the share of its mass within `band` (a share of the side) of the edge.

    A heatmap spread evenly over the film gives the band's share of the area; one that stays on
    the lungs gives less. An all-zero heatmap gives NaN.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    height, width = heatmaps.shape[1:3]
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    depth = np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols))
    outer = depth < band * min(height, width)
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


@dataclass(frozen=True)
class SavedModelScores:
    """What an exported model's `serving_default` said about a set of images."""

    p_pneumonia: np.ndarray
    class_probabilities: np.ndarray
    threshold: float


def score_saved_model(model_dir: str | Path, images: np.ndarray,
                      batch_size: int = 64) -> SavedModelScores:
    """Run uint8 images [N, S, S, 1] through the SavedModel's `serving_default` signature."""
    import tensorflow as tf  # heavy; only the callers that score models pay for it

    serve = tf.saved_model.load(str(model_dir)).signatures[SERVING_SIGNATURE]
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = serve(**{INPUT_NAME: tf.constant(images[start:start + batch_size], dtype=tf.uint8)})
        for name, tensor in batch.items():
            outputs.setdefault(name, []).append(tensor.numpy())
    joined = {name: np.concatenate(parts) for name, parts in outputs.items()}
    thresholds = np.unique(joined[THRESHOLD])
    if len(thresholds) != 1:
        raise ValueError(f"{model_dir}: the model reported several thresholds {thresholds}")
    return SavedModelScores(joined[PNEUMONIA_PROBABILITY].astype(float),
                            joined[CLASS_PROBABILITIES].astype(float), float(thresholds[0]))


def evaluate_saved_model(model_dir: str | Path, data_dir: str | Path,
                         figures_dir: str | Path | None = None,
                         splits: Sequence[str] | None = None,
                         operating_point: OperatingPoint | None = None) -> dict:
    """Metrics of an exported model on a Kaggle-layout folder, at the model's own threshold.

    Every image under `data_dir` counts unless `splits` (e.g. `["test"]`) names the sub-folders
    to read. Images go through the dataset loader, i.e. `shared.imaging` (the worker's path).
    With a site's `operating_point`, the scores are its calibrated p(pneumonia) and the threshold
    is its own (as the worker answers that site); `model_threshold` keeps the model's.
    """
    from services.trainer.dataset import load_images, scan_dataset
    from services.trainer.figures import save_evaluation_figures

    records = scan_dataset(Path(data_dir), splits)
    if not records:
        raise ValueError(f"no labelled images under {data_dir}")
    images = load_images(records)
    scores = score_saved_model(model_dir, images)
    y_true = np.array([r.label == "PNEUMONIA" for r in records], dtype=int)
    p, threshold = scores.p_pneumonia, scores.threshold
    if operating_point is not None:
        p = np.array([operating_point.calibrate(v) for v in p])
        threshold = operating_point.threshold
    # The subtype score p_viral / (p_bacterial + p_viral) does not change with the calibration.
    metrics = compute_metrics(y_true, p, threshold, [r.subtype for r in records],
                              class_probabilities=scores.class_probabilities)
    if figures_dir is not None:
        metrics["figures"] = {name: str(path) for name, path in save_evaluation_figures(
            Path(figures_dir), y_true, p, threshold).items()}
    extra = {}
    if operating_point is not None:
        extra = {"model_threshold": scores.threshold, "operating_point": {
            "site": operating_point.site, "data_fingerprint": operating_point.data_fingerprint,
            "fitted_at": operating_point.fitted_at.isoformat(),
            "calibration": operating_point.calibration.model_dump()}}
    return {**metrics, **extra, "model_dir": str(model_dir), "data_dir": str(data_dir),
            "splits": list(splits) if splits else None}
