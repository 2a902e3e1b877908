"""Fitting one CNN: class-weighted, augmented tf.data input, Adam + cross-entropy, early stopping.

Targets are the 3 classes (normal, bacterial, viral); a pneumonia of unknown subtype gets half of
its mass on each subtype; every target is label-smoothed. With teachers (`modeling.distill`), a
training image's target is (1 - w) times that smoothed target plus w times the teachers' mean
class probabilities on the image (an unknown subtype's teacher part included as it is); validation
targets stay the smoothed labels. The training `auroc` then counts a target as pneumonia when
less than half of it is normal. Every class (and the unknown-subtype group) carries the same total
weight, so normal films, outnumbered about 3 to 1 by pneumonia, are not drowned out. Early stopping
watches the validation loss and restores the best epoch's weights; with `ema_momentum` the network
instead ends with Adam's exponential moving average of its weights over the steps (Keras'
`use_ema`), a flatter point than any one epoch's weights, and early stopping only ends training.
With `probe_head` the head starts from a logistic regression on the pooled features of the
unaugmented training films ("linear probing, then fine-tuning", LP-FT, which was reported to
distort pretrained features less under distribution shift).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from services.trainer.data.records import XrayRecord
from services.trainer.modeling.augment import AugmentConfig, augment_batch
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.model import build_network
from shared.contract import UNKNOWN_SUBTYPE, pneumonia_probability


def class_labels(records: Sequence[XrayRecord]) -> np.ndarray:
    """0 normal, 1 bacterial, 2 viral, UNKNOWN_SUBTYPE pneumonia of unknown subtype."""
    return np.array([UNKNOWN_SUBTYPE if r.class_index is None else r.class_index for r in records])


def soft_targets(labels: np.ndarray) -> np.ndarray:
    """One-hot rows; an unknown subtype splits its pneumonia mass between bacterial and viral."""
    targets = np.zeros((len(labels), 3), dtype=np.float32)
    known = labels != UNKNOWN_SUBTYPE
    targets[np.flatnonzero(known), labels[known]] = 1.0
    targets[~known, 1:] = 0.5
    return targets


def training_targets(labels: np.ndarray, label_smoothing: float,
                     teacher_probabilities: np.ndarray | None = None,
                     distill_weight: float = 0.0) -> np.ndarray:
    """Label-smoothed `soft_targets`, mixed with the teachers' class probabilities when given.

    Smoothing as Keras does it: y * (1 - s) + s / classes; then (1 - w) * that + w * teachers.
    """
    smoothed = soft_targets(labels) * (1.0 - label_smoothing) + label_smoothing / 3
    if teacher_probabilities is None:
        return smoothed.astype(np.float32)
    mixed = (1.0 - distill_weight) * smoothed + distill_weight * teacher_probabilities
    return mixed.astype(np.float32)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image weights giving every label group the same total weight (mean weight 1)."""
    counts = Counter(labels.tolist())
    per_group = {label: len(labels) / (len(counts) * count) for label, count in counts.items()}
    return np.array([per_group[label] for label in labels.tolist()], dtype=np.float32)


class PneumoniaAUC(keras.metrics.AUC):
    """AUROC of p(pneumonia) = 1 - softmax(logits)[normal], against 'not normal' targets."""

    def __init__(self, name: str = "auroc", **kwargs) -> None:
        super().__init__(name=name, num_thresholds=500, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        is_pneumonia = tf.cast(y_true[:, 0] < 0.5, tf.float32)
        p = pneumonia_probability(tf.nn.softmax(y_pred, axis=-1))
        return super().update_state(is_pneumonia, p)


@dataclass
class FittedCnn:
    """One trained network, its per-epoch history and the epoch whose weights it kept."""

    model: keras.Model
    history: list[dict]
    best_epoch: int


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The augmentation ranges of a recipe: the defaults, widened or extended by its settings."""
    base = AugmentConfig()
    scale = config.intensity_scale

    def widen(bounds: tuple[float, float]) -> tuple[float, float]:
        return bounds[0] ** scale, bounds[1] ** scale  # log-symmetric ranges about 1

    return AugmentConfig(
        brightness=base.brightness * scale, contrast=widen(base.contrast), gamma=widen(base.gamma),
        crop_area=(config.crop_area_min, 1.0), erase_corners=config.erase_corners,
        resample=config.resample_min)


def training_stream(images: np.ndarray, labels: np.ndarray, config: TrainConfig,
                    teacher_probabilities: np.ndarray | None = None) -> tf.data.Dataset:
    """An endless, reshuffled, augmented stream of (pixels, targets, weights) batches.

    Each image keeps its own target (`training_targets`) through shuffling and augmentation.
    """
    targets = training_targets(labels, config.label_smoothing, teacher_probabilities,
                               config.distill_weight)
    data = tf.data.Dataset.from_tensor_slices((images, targets, balanced_weights(labels)))
    batch_size = min(config.batch_size, len(images))
    batches = (data.shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True)
               .repeat().batch(batch_size, drop_remainder=True).enumerate())
    seed = tf.constant(config.seed, tf.int64)
    ranges = augment_config(config)

    def prepare(step, batch):
        x, y, w = batch
        x = tf.cast(x, tf.float32)
        if config.augment:
            x = augment_batch(x, tf.stack([seed, step]), ranges)
        return x, y, w

    return batches.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(2)


def inference_stream(images: np.ndarray, batch_size: int, targets: np.ndarray | None = None):
    """Batches of float pixels (and targets when given) in order, for evaluation and prediction."""
    data = tf.data.Dataset.from_tensor_slices(images if targets is None else (images, targets))
    data = data.batch(batch_size)
    if targets is None:
        return data.map(lambda x: tf.cast(x, tf.float32)).prefetch(2)
    return data.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """[N, 3] logits for uint8 images, without augmentation or dropout."""
    return model.predict(inference_stream(images, batch_size), verbose=0).astype(np.float64)


def probe_head(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> None:
    """Set the head (`logits`) to a class-balanced multinomial logistic regression fitted on the
    network's pooled features (`gap`) of `images`; films of unknown subtype are left out."""
    from sklearn.linear_model import LogisticRegression

    features = keras.Model(model.inputs, model.get_layer("gap").output).predict(
        inference_stream(images, 64), verbose=0)
    known = labels != UNKNOWN_SUBTYPE
    if len(np.unique(labels[known])) != 3:
        raise ValueError("probing the head needs training films of all three classes")
    regression = LogisticRegression(class_weight="balanced", max_iter=2000)
    regression.fit(features[known], labels[known])
    model.get_layer("logits").set_weights([regression.coef_.T.astype(np.float32),
                                           regression.intercept_.astype(np.float32)])


def fit_cnn(config: TrainConfig, train_images: np.ndarray, train_labels: np.ndarray,
            val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
            *, epochs: int | None = None, seed_offset: int = 0,
            teacher_probabilities: np.ndarray | None = None,
            callbacks: Sequence[keras.callbacks.Callback] = ()) -> FittedCnn:
    """Train one network; with validation data, stop early on its loss and keep the best epoch.

    `teacher_probabilities` [len(train_images), 3]: the teachers' part of each training target;
    `callbacks` run after the recipe's own.
    """
    model = build_network(config.backbone, image_size=config.image_size, width=config.width,
                          dropout=config.dropout, seed=config.seed + seed_offset,
                          equalize=config.equalize, frozen_blocks=config.frozen_blocks,
                          internal_size=config.internal_size)
    if config.probe_head:
        probe_head(model, train_images, train_labels)
    averaged = config.ema_momentum is not None
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, **(
            {"use_ema": True, "ema_momentum": config.ema_momentum} if averaged else {})),
        # the targets carry the label smoothing (`training_targets`)
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[PneumoniaAUC()],
    )
    validation = None
    stopping: list[keras.callbacks.Callback] = []
    if val_images is not None and val_labels is not None:
        validation = inference_stream(val_images, config.batch_size,
                                      training_targets(val_labels, config.label_smoothing))
        stopping = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                          restore_best_weights=not averaged),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                              patience=max(1, config.patience // 3), min_lr=1e-5),
        ]
    steps = max(1, math.floor(len(train_images) / config.batch_size))
    fit = model.fit(training_stream(train_images, train_labels, config, teacher_probabilities),
                    steps_per_epoch=steps, epochs=epochs or config.epochs,
                    validation_data=validation, callbacks=[*stopping, *callbacks],
                    verbose=config.verbose, shuffle=False)
    history = [
        {"epoch": epoch + 1, **{name: float(values[epoch]) for name, values in fit.history.items()}}
        for epoch in range(len(fit.history["loss"]))
    ]
    losses = fit.history.get("val_loss")
    # the moving average runs to the last step, so it is the last epoch's weights that are kept
    best_epoch = int(np.argmin(losses)) + 1 if losses and not averaged else len(history)
    return FittedCnn(model=model, history=history, best_epoch=best_epoch)
