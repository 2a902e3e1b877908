"""Scoring an exported SavedModel through its `serving_default` signature: the evaluate figures of
a version on a data set, and a version's acceptance at a site.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.trainer.data.dataset import data_fingerprint, load_images, scan_dataset
from services.trainer.data.records import XrayRecord
from services.trainer.evaluation.figures import save_evaluation_figures
from services.trainer.evaluation.metrics import compute_metrics
from services.trainer.evaluation.site_calibration import (
    SiteAcceptance,
    patient_groups,
    site_acceptance,
)
from shared.contract import (
    ASSETS_EXTRA,
    CLASS_PROBABILITIES,
    INPUT_NAME,
    MODEL_INFO_FILE,
    MODEL_NAME,
    PNEUMONIA_PROBABILITY,
    SERVING_SIGNATURE,
    THRESHOLD,
)
from shared.operating_point import OperatingPoint


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


def model_image_size(model_dir: Path) -> int:
    """The input side an exported version was made for (its model_info), 224 when unrecorded."""
    info_file = model_dir / ASSETS_EXTRA / MODEL_INFO_FILE
    return int(json.loads(info_file.read_text()).get("image_size", 224)) if info_file.is_file() \
        else 224


def score_site(model_dir: Path, records: Sequence[XrayRecord], image_size: int = 224):
    """(labels, p(pneumonia), the model's threshold) through `serving_default`."""
    scores = score_saved_model(model_dir, load_images(records, size=image_size))
    y = np.array([r.label == "PNEUMONIA" for r in records], dtype=int)
    return y, scores.p_pneumonia, scores.threshold


def run_site_acceptance(site: str, model_dir: Path, records: Sequence[XrayRecord], *,
                        target_sensitivity: float, confidence: float | None = None,
                        model_name: str = MODEL_NAME,
                        model_version: int | None = None) -> SiteAcceptance:
    """Score `records` with the exported model at `model_dir`, then `site_acceptance`."""
    y, p, model_threshold = score_site(model_dir, records, model_image_size(model_dir))
    return site_acceptance(site, y, p, model_threshold, patient_groups(records),
                           fingerprint=data_fingerprint(records),
                           target_sensitivity=target_sensitivity, confidence=confidence,
                           model_name=model_name,
                           model_version=model_version)
