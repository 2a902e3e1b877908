"""The training recipe: data -> patient-grouped validation -> CNN (+ HOG baseline) -> calibrated,
thresholded model(s) with metrics and figures.

Single split (`folds` <= 1, the default): the lowest-numbered patients (`split_by_patient`, strategy
"lowest", like the official test split) are held out; they stop training early, fit the
temperature and choose the threshold, and give the reported validation metrics. AUROC is
threshold-free; the threshold-dependent rates on this split are measured where the threshold was
chosen, so the promotion gate re-measures on its own untouched gate set.

K folds (`folds` >= 2, `patient_folds`): one network per fold, early-stopped on its fold; the
out-of-fold logits (every image scored by a network that never trained on it) fit the temperature,
choose the threshold and give the validation metrics; per-fold metrics with mean and sd are
reported. The shipped model is one network retrained on all images for the median best epoch count
(`ship="refit"`, the default) or the fold ensemble (`ship="ensemble"`). Refit is the default
because an ensemble costs each served image the CPU of every one of its networks, which the
serving budget per image does not allow (`docs/benchmarks.md`).

Distillation (`config.teachers`, `modeling.distill`): the teachers are checked against the run's
data fingerprint and split, then score the training images once; each network trains towards the
mix of labels and teachers, while validation, temperature, threshold and metrics use the labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from services.trainer.data.dataset import SPLITS, data_fingerprint, load_images, scan_dataset
from services.trainer.data.records import XrayRecord
from services.trainer.data.splits import patient_folds, patient_groups, split_by_patient
from services.trainer.evaluation.calibration import (
    ECE_BINS,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from services.trainer.evaluation.figures import save_evaluation_figures, save_training_curves
from services.trainer.evaluation.metrics import compute_metrics
from services.trainer.evaluation.thresholds import choose_threshold
from services.trainer.modeling.cnn_training import FittedCnn, class_labels, fit_cnn, predict_logits
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.distill import (
    Teacher,
    TeacherScorer,
    check_teachers,
    teacher_probabilities,
)
from services.trainer.modeling.hog import (
    HOG_SIZE,
    fit_hog_baseline,
    hog_features,
    pneumonia_probability,
)
from services.trainer.modeling.model import build_network
from shared.contract import UNKNOWN_SUBTYPE
from shared.contract import pneumonia_probability as p_pneumonia_of

FOLD_SUMMARY_KEYS = (
    "auroc", "sensitivity", "specificity", "precision", "f1", "ece", "subtype_auroc",
)
Splits = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class TrainingOutcome:
    """What a run produced; `to_json()` is everything but the networks."""

    models: list[keras.Model]
    threshold: float
    temperature: float
    params: dict
    history: list[dict]
    validation: dict
    figures: dict[str, Path]
    baseline: dict | None
    calibration: dict = field(default_factory=dict)
    folds: list[dict] = field(default_factory=list)
    fold_summary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "threshold": self.threshold, "temperature": self.temperature, "params": self.params,
            "validation": self.validation, "baseline": self.baseline,
            "calibration": self.calibration, "folds": self.folds,
            "fold_summary": self.fold_summary, "history": self.history,
            "figures": {name: str(path) for name, path in self.figures.items()},
        }


def select_records(config: TrainConfig) -> list[XrayRecord]:
    """The configured data set's records: its training splits, or a flat NORMAL/PNEUMONIA folder."""
    root = Path(config.data_dir)
    has_splits = root.is_dir() and any((root / name).is_dir() for name in SPLITS)
    present = [s for s in config.data_splits if (root / s).is_dir()]
    return scan_dataset(root, present if has_splits else None)


def subsample(records: Sequence[XrayRecord], max_images: int | None, seed: int) -> list[XrayRecord]:
    """About `max_images` records, whole patients, every class kept (for smoke runs)."""
    if max_images is None or max_images >= len(records):
        return list(records)
    _, kept = split_by_patient(records, max_images / len(records), seed=seed, strategy="random")
    return kept


def validation_splits(records: Sequence[XrayRecord], config: TrainConfig) -> Splits:
    """(train indices, validation indices) pairs: one held-out split, or the patient folds."""
    if config.folds >= 2:
        return [(np.asarray(a), np.asarray(b)) for a, b in patient_folds(records, config.folds,
                                                                          seed=config.seed)]
    position = {id(r): i for i, r in enumerate(records)}
    rest, held = split_by_patient(records, config.validation_fraction, seed=config.seed,
                                  strategy=config.validation_strategy)
    return [(np.array([position[id(r)] for r in rest]), np.array([position[id(r)] for r in held]))]


def _fold_summary(per_fold: list[dict]) -> dict:
    summary = {}
    for key in FOLD_SUMMARY_KEYS:
        values = [m[key] for m in per_fold if m.get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))
                            if len(values) > 1 else 0.0}
    return summary


def _prepare_runtime(config: TrainConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def run_training(config: TrainConfig, records: Sequence[XrayRecord] | None = None, *,
                 score_teacher: TeacherScorer | None = None) -> TrainingOutcome:
    """Train, calibrate, threshold and measure; `records` (say, less a gate set) skip the scan.

    With `config.teachers`, `score_teacher` scores them (`artifact.scoring.score_saved_model`);
    a teacher that may have seen this run's validation or gate images raises `DistillationError`.
    """
    _prepare_runtime(config)
    records = subsample(records if records is not None else select_records(config),
                        config.max_images, config.seed)
    fingerprint = data_fingerprint(records)
    teachers = [Teacher.read(path) for path in config.teachers]
    if teachers and score_teacher is None:
        raise ValueError("config.teachers need a score_teacher to score them")
    check_teachers(teachers, config, fingerprint)
    images = load_images(records, size=config.image_size, cache_dir=config.cache_dir)
    labels = class_labels(records)
    is_pneumonia = (labels != 0).astype(int)
    subtypes = [r.subtype for r in records]
    splits = validation_splits(records, config)
    taught = None
    if teachers and score_teacher is not None:
        trained_on = np.unique(np.concatenate([train_idx for train_idx, _ in splits]))
        taught = teacher_probabilities(teachers, score_teacher, records, trained_on,
                                       images=images, image_size=config.image_size,
                                       cache_dir=config.cache_dir)
    oof_logits, history, fitted = _fit_networks(config, images, labels, splits, taught)
    scored = np.sort(np.concatenate([val_idx for _, val_idx in splits]))

    temperature = fit_temperature(oof_logits[scored], labels[scored])
    probs = softmax(oof_logits[scored], temperature)
    p_pneumonia = p_pneumonia_of(probs)
    threshold = choose_threshold(is_pneumonia[scored], p_pneumonia, config.target_sensitivity)
    validation = compute_metrics(is_pneumonia[scored], p_pneumonia, threshold,
                                 [subtypes[i] for i in scored], class_probabilities=probs)
    calibration = {"temperature": temperature, "ece_bins": ECE_BINS, "ece_after": validation["ece"],
                   "ece_before": expected_calibration_error(
                       is_pneumonia[scored], p_pneumonia_of(softmax(oof_logits[scored])))}
    per_fold = [] if len(splits) < 2 else [
        {"fold": fold, "best_epoch": fitted[fold].best_epoch,
         **_metrics_at(oof_logits[val_idx], temperature, threshold, is_pneumonia[val_idx],
                       [subtypes[i] for i in val_idx])}
        for fold, (_, val_idx) in enumerate(splits)]

    models = [run.model for run in fitted]
    if len(splits) > 1 and config.ship == "refit":
        epochs = int(np.median([run.best_epoch for run in fitted]))
        models = [fit_cnn(config, images, labels, epochs=epochs, seed_offset=len(splits),
                          teacher_probabilities=taught).model]
    baseline = (_hog_baseline(images, is_pneumonia, records, splits, scored, config)
                if config.baseline else None)

    out_dir = Path(config.out_dir or tempfile.mkdtemp(prefix="cxr-train-"))
    figures = {**save_evaluation_figures(out_dir / "figures", is_pneumonia[scored], p_pneumonia,
                                         threshold),
               **save_training_curves(out_dir / "figures", history)}
    outcome = TrainingOutcome(models=models, threshold=threshold, temperature=temperature,
                              params=_params(config, records, splits, models, fingerprint,
                                             teachers),
                              history=history,
                              validation=validation, figures=figures, baseline=baseline,
                              calibration=calibration, folds=per_fold,
                              fold_summary=_fold_summary(per_fold))
    (out_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), indent=2))
    return outcome


def _fit_networks(config: TrainConfig, images: np.ndarray, labels: np.ndarray, splits: Splits,
                  taught: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, list[dict], list[FittedCnn]]:
    """One network per split; the logits each gives its own validation images, and histories.

    `taught`: the teachers' mean class probabilities per image (rows of training images set).

    With K folds and an `out_dir`, every finished fold is checkpointed there (`folds/fold-K/`:
    weights, history, best epoch), so a long cross-validation that is stopped resumes at the first
    unfinished fold when run again with the same data and settings.
    """
    oof_logits = np.zeros((len(images), 3))
    history: list[dict] = []
    fitted = []
    for fold, (train_idx, val_idx) in enumerate(splits):
        checkpoint = (FoldCheckpoint(Path(config.out_dir) / "folds" / f"fold-{fold}",
                                     _fold_key(config, images, train_idx, val_idx))
                      if config.out_dir and len(splits) > 1 else None)
        run = checkpoint.load(config) if checkpoint else None
        if run is None:
            run = fit_cnn(config, images[train_idx], labels[train_idx], images[val_idx],
                          labels[val_idx], seed_offset=fold,
                          teacher_probabilities=None if taught is None else taught[train_idx])
            if checkpoint:
                checkpoint.save(run)
        oof_logits[val_idx] = predict_logits(run.model, images[val_idx])
        history += [{**row, "fold": fold} if len(splits) > 1 else row for row in run.history]
        fitted.append(run)
    return oof_logits, history, fitted


# TrainConfig fields that do not change what a fold's network learns
_NOT_IN_FOLD_KEY = ("out_dir", "verbose", "ship", "baseline", "target_sensitivity", "cache_dir")


def _fold_key(config: TrainConfig, images: np.ndarray, train_idx: np.ndarray,
              val_idx: np.ndarray) -> str:
    """What a fold's network depends on: the settings, its images and its split."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_FOLD_KEY}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for index in (train_idx, val_idx):
        digest.update(np.ascontiguousarray(index, dtype=np.int64).tobytes())
        digest.update(hashlib.sha256(np.ascontiguousarray(images[index])).digest())
    return digest.hexdigest()


@dataclass
class FoldCheckpoint:
    """A finished fold on disk: its weights, history and best epoch, under the fold's key."""

    folder: Path
    key: str

    def load(self, config: TrainConfig) -> FittedCnn | None:
        meta_path = self.folder / "fold.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != self.key:
            return None  # another data set or other settings: train again
        model = build_network(config.backbone, image_size=config.image_size, width=config.width,
                              dropout=config.dropout, seed=config.seed, equalize=config.equalize,
                              imagenet=False, frozen_blocks=config.frozen_blocks,
                              internal_size=config.internal_size)
        model.load_weights(self.folder / "model.weights.h5")
        return FittedCnn(model=model, history=meta["history"], best_epoch=meta["best_epoch"])

    def save(self, run: FittedCnn) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        run.model.save_weights(self.folder / "model.weights.h5")
        temporary = self.folder / "fold.json.tmp"
        temporary.write_text(json.dumps({"key": self.key, "history": run.history,
                                         "best_epoch": run.best_epoch}))
        temporary.replace(self.folder / "fold.json")  # the marker lands after the weights


def _metrics_at(logits: np.ndarray, temperature: float, threshold: float, is_pneumonia: np.ndarray,
                subtypes: list[str | None]) -> dict:
    probs = softmax(logits, temperature)
    return compute_metrics(is_pneumonia, p_pneumonia_of(probs), threshold, subtypes,
                           class_probabilities=probs, bootstrap_resamples=200)


def _hog_baseline(images: np.ndarray, is_pneumonia: np.ndarray, records: Sequence[XrayRecord],
                  splits: Splits, scored: np.ndarray,
                  config: TrainConfig) -> dict:
    """HOG baseline metrics on the same validation images, at its own sensitivity-first cut."""
    features = hog_features(images)
    groups = patient_groups(records)
    p = np.zeros(len(records))
    for train_idx, val_idx in splits:
        model = fit_hog_baseline(features[train_idx], is_pneumonia[train_idx], groups[train_idx],
                                 seed=config.seed)
        p[val_idx] = pneumonia_probability(model, features[val_idx])
    threshold = choose_threshold(is_pneumonia[scored], p[scored], config.target_sensitivity)
    per_fold = [] if len(splits) < 2 else [
        {"fold": fold, **compute_metrics(is_pneumonia[val_idx], p[val_idx], threshold,
                                         bootstrap_resamples=200)}
        for fold, (_, val_idx) in enumerate(splits)]
    return {**compute_metrics(is_pneumonia[scored], p[scored], threshold),
            "model": f"HOG {HOG_SIZE}px + StandardScaler + LogisticRegression, sigmoid-calibrated",
            "folds": per_fold, "fold_summary": _fold_summary(per_fold)}


def _params(config: TrainConfig, records: Sequence[XrayRecord], splits: Splits,
            models: list[keras.Model], fingerprint: str, teachers: Sequence[Teacher]) -> dict:
    labels = class_labels(records)
    return {
        **dataclasses.asdict(config),
        **({"teacher_models": [t.record() for t in teachers]} if teachers else {}),
        "data_fingerprint": fingerprint,
        "data_images": len(records),
        "data_patients": len({r.patient for r in records}),
        "data_normal": int((labels == 0).sum()),
        "data_bacterial": int((labels == 1).sum()),
        "data_viral": int((labels == 2).sum()),
        "data_unknown_subtype": int((labels == UNKNOWN_SUBTYPE).sum()),
        "train_images": [len(train_idx) for train_idx, _ in splits],
        "validation_images": [len(val_idx) for _, val_idx in splits],
        "model_parameters": int(models[0].count_params()),
        "ensemble_size": len(models),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
