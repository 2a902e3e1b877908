"""The scope-screening network: is this a frontal, upright, positive paediatric chest film?

A small CNN on the served input average-pooled to 56 x 56 (per-image standardised, as the
pneumonia network is) with one head per check of `shared.contract.SCOPE_CHECKS`:

- `not_chest_radiograph`: chest films (any age, view or orientation) against out-of-scope images
  (other radiographs, CT, photographs and screenshots, scikit-image samples, synthetic noise,
  gradients, documents and shapes);
- `lateral_view`: lateral chest films against frontal ones;
- `rotated`: 1 - p(upright) of a 4-way head (0/90/180/270 degrees), self-supervised on films;
- `inverted`: self-supervised on films with negated intensities;
- `adult`: adult films (`nih_adult`) against paediatric ones, under heavy acquisition augmentation
  (crop and aspect, gamma, contrast, blur, noise) so the head learns the patient, not the hospital;
- `atypical_image`: the Mahalanobis distance of the network's embedding (global-average-pooled
  last feature map) to the in-scope training films, with a Ledoit-Wolf shrunk covariance, so an
  image far from every training film is flagged even when no head knows its kind.

Thresholds are quantiles of the scores of held-back in-scope films (`fit_thresholds`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.covariance import LedoitWolf

from services.trainer.modeling.model import PerImageStandardization
from services.trainer.scope.data import SCOPE_POOL, SCOPE_SIZE, ScopeData
from shared.contract import SCOPE_CHECKS

# Kinds of training sample; the heads' losses are masked by kind.
PAEDIATRIC, ADULT_FILM, LATERAL_FILM, NEGATIVE = 0, 1, 2, 3
HEADS = ("not_chest", "lateral", "rotation", "inverted", "adult")
EMBEDDING = "embedding"
# Layer names start with this, so a served version's variables tell the two networks apart.
PREFIX = "scope_"
MODEL_FILE = "scope_model.keras"
STATS_FILE = "scope_stats.npz"
INFO_FILE = "scope_info.json"


def build_scope_net(width: int = 12, seed: int = 0) -> keras.Model:
    """[N, 56, 56, 1] float pixels 0..255 -> embedding and the five heads' logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SCOPE_SIZE, SCOPE_SIZE, 1), name="pooled")
    x = PerImageStandardization(name=f"{PREFIX}standardize")(inputs)

    def conv(x, filters: int, name: str):
        name = PREFIX + name
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    x = conv(x, width, "c1")
    x = layers.MaxPooling2D(2, name=f"{PREFIX}p1")(x)  # 28
    x = conv(x, 2 * width, "c2")
    x = layers.MaxPooling2D(2, name=f"{PREFIX}p2")(x)  # 14
    x = conv(x, 4 * width, "c3")
    x = layers.MaxPooling2D(2, name=f"{PREFIX}p3")(x)  # 7
    x = conv(x, 6 * width, "c4")
    embedding = layers.GlobalAveragePooling2D(name=PREFIX + EMBEDDING)(x)
    hidden = layers.Dropout(0.2, name=f"{PREFIX}dropout")(embedding)
    outputs = {EMBEDDING: embedding}
    for head in HEADS:
        outputs[head] = layers.Dense(4 if head == "rotation" else 1, name=PREFIX + head)(hidden)
    return keras.Model(inputs, outputs, name="cxr_scope")


# --- augmentation (batched, in the graph) --------------------------------------------------------


def _augment(images: tf.Tensor, kinds: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Acquisition variation: crop/aspect/zoom, flip, gamma, contrast, brightness, blur, noise."""
    n = tf.shape(images)[0]
    negative = tf.cast(tf.equal(kinds, NEGATIVE), tf.float32)
    # Negatives may be cropped hard (a crop of a photograph is still not a chest film).
    min_scale = 0.8 - 0.45 * negative
    sy = min_scale + tf.random.uniform([n]) * (1.12 - min_scale)
    sx = sy * tf.exp(tf.random.uniform([n], -0.15, 0.15) * strength)
    oy = tf.random.uniform([n]) * (1.0 - sy)
    ox = tf.random.uniform([n]) * (1.0 - sx)
    boxes = tf.stack([oy, ox, oy + sy, ox + sx], axis=1)
    x = tf.image.crop_and_resize(images / 255.0, boxes, tf.range(n), (SCOPE_SIZE, SCOPE_SIZE))
    flip = tf.random.uniform([n, 1, 1, 1]) < 0.5
    x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    gamma = tf.exp(tf.random.normal([n, 1, 1, 1], stddev=0.35 * strength))
    x = tf.pow(tf.clip_by_value(x, 1e-4, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.uniform([n, 1, 1, 1], 1 - 0.4 * strength, 1 + 0.4 * strength)
    x = (x - mean) * contrast + mean + tf.random.uniform([n, 1, 1, 1], -0.12, 0.12) * strength
    blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
    x = x + (blurred - x) * tf.random.uniform([n, 1, 1, 1]) * tf.cast(
        tf.random.uniform([n, 1, 1, 1]) < 0.4, tf.float32)
    sigma = tf.random.uniform([n, 1, 1, 1], 0, 0.04 * strength) * tf.cast(
        tf.random.uniform([n, 1, 1, 1]) < 0.5, tf.float32)
    x = x + tf.random.normal(tf.shape(x)) * sigma
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _rotate(images: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Each image turned by k[i] quarter turns."""
    turned = [images, tf.image.rot90(images, 1), tf.image.rot90(images, 2),
              tf.image.rot90(images, 3)]
    out = turned[0]
    for quarter in (1, 2, 3):
        out = tf.where(tf.reshape(tf.equal(k, quarter), [-1, 1, 1, 1]), turned[quarter], out)
    return out


def _orient(images: tf.Tensor, kinds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random quarter turns and inversions: frontal films half the time, negatives always."""
    n = tf.shape(images)[0]
    frontal = tf.logical_or(tf.equal(kinds, PAEDIATRIC), tf.equal(kinds, ADULT_FILM))
    negative = tf.equal(kinds, NEGATIVE)
    turn = tf.random.uniform([n]) < 0.5
    k = tf.where(turn, tf.random.uniform([n], 1, 4, tf.int32), 0)
    k = tf.where(negative, tf.random.uniform([n], 0, 4, tf.int32), tf.where(frontal, k, 0))
    invert = tf.random.uniform([n]) < 0.3
    invert = tf.logical_and(invert, tf.logical_or(frontal, negative))
    x = _rotate(images, k)
    x = tf.where(tf.reshape(invert, [-1, 1, 1, 1]), 255.0 - x, x)
    return x, k, invert


# --- training -----------------------------------------------------------------------------------


@dataclass
class ScopeTrainConfig:
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3
    width: int = 12
    seed: int = 0
    holdout: tuple[str, ...] = ()  # negative categories (or "lateral_cxr") left out of training
    false_flag_rate: float = 0.004  # per check, on held-back in-scope films
    verbose: bool = True


# Share of each batch per kind of sample.
BATCH_MIX = {PAEDIATRIC: 0.38, ADULT_FILM: 0.17, LATERAL_FILM: 0.08, NEGATIVE: 0.37}


def _sampler(data: ScopeData, config: ScopeTrainConfig):
    """A function giving one batch (pooled images, kinds) drawn by BATCH_MIX."""
    rng = np.random.default_rng(config.seed)
    negatives = [v for k, v in data.negatives.items() if k not in config.holdout and len(v)]
    pools = {PAEDIATRIC: [data.train_films], ADULT_FILM: [data.adult_train],
             LATERAL_FILM: [] if "lateral_cxr" in config.holdout else [data.lateral],
             NEGATIVE: negatives}
    pools = {kind: [g for g in groups if len(g)] for kind, groups in pools.items()}
    mix = {k: v for k, v in BATCH_MIX.items() if pools[k]}
    total = sum(mix.values())
    counts = {k: int(round(config.batch_size * v / total)) for k, v in mix.items()}

    def batch() -> tuple[np.ndarray, np.ndarray]:
        images, kinds = [], []
        for kind, count in counts.items():
            groups = pools[kind]
            which = rng.integers(len(groups), size=count)  # negatives: categories equally often
            for g in range(len(groups)):
                chosen = rng.integers(len(groups[g]), size=int(np.sum(which == g)))
                images.append(groups[g][chosen])
            kinds.append(np.full(count, kind, np.int32))
        return np.concatenate(images).astype(np.float32), np.concatenate(kinds)

    return batch


def _losses(outputs: dict, kinds: tf.Tensor, k: tf.Tensor, invert: tf.Tensor) -> tf.Tensor:
    bce = keras.losses.binary_crossentropy
    negative = tf.equal(kinds, NEGATIVE)
    frontal = tf.logical_or(tf.equal(kinds, PAEDIATRIC), tf.equal(kinds, ADULT_FILM))
    upright = tf.logical_and(tf.equal(k, 0), tf.logical_not(invert))

    def masked(loss: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(mask, tf.float32)
        return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    def binary(head: str, target: tf.Tensor) -> tf.Tensor:
        return bce(tf.cast(target, tf.float32)[:, None], outputs[head], from_logits=True)

    not_chest = tf.reduce_mean(binary("not_chest", negative))
    lateral = masked(binary("lateral", tf.equal(kinds, LATERAL_FILM)),
                     tf.logical_and(tf.logical_not(negative), upright))
    rotation = masked(keras.losses.sparse_categorical_crossentropy(
        k, outputs["rotation"], from_logits=True), frontal)
    inverted = masked(binary("inverted", invert), frontal)
    adult = masked(binary("adult", tf.equal(kinds, ADULT_FILM)), tf.logical_and(frontal, upright))
    return not_chest + lateral + rotation + inverted + adult


def train_scope_net(data: ScopeData, config: ScopeTrainConfig) -> keras.Model:
    model = build_scope_net(width=config.width, seed=config.seed)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.steps,
                                                      warmup_target=None)
    optimizer = keras.optimizers.Adam(schedule)
    tf.random.set_seed(config.seed)

    @tf.function
    def step(images: tf.Tensor, kinds: tf.Tensor) -> tf.Tensor:
        x = _augment(images, kinds)
        x, k, invert = _orient(x, kinds)
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = _losses(outputs, kinds, k, invert)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    batch = _sampler(data, config)
    running = None
    started = time.monotonic()
    for index in range(config.steps):
        images, kinds = batch()
        loss = float(step(tf.constant(images), tf.constant(kinds)))
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if config.verbose and (index + 1) % 100 == 0:
            print(f"step {index + 1}/{config.steps} loss {running:.3f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    return model


# --- the screen: network, embedding statistics, thresholds ---------------------------------------


def head_scores(outputs: dict) -> list:
    """Scores of the five heads, SCOPE_CHECKS order (atypical comes separately); tf or numpy."""
    sigmoid = tf.math.sigmoid
    rotation = tf.nn.softmax(outputs["rotation"], axis=-1)
    return [sigmoid(outputs["not_chest"])[:, 0], sigmoid(outputs["lateral"])[:, 0],
            1.0 - rotation[:, 0], sigmoid(outputs["inverted"])[:, 0],
            sigmoid(outputs["adult"])[:, 0]]


@dataclass
class ScopeScreen:
    """The trained network plus what turns its outputs into SCOPE_CHECKS scores."""

    net: keras.Model
    mean: np.ndarray  # [D] embedding mean of in-scope training films
    precision: np.ndarray  # [D, D] inverse of the shrunk covariance
    thresholds: np.ndarray  # [len(SCOPE_CHECKS)]
    info: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """The side of the served input this screen pools (224)."""
        return int(self.net.inputs[0].shape[1]) * SCOPE_POOL

    def scores_tf(self, pixels: tf.Tensor) -> tf.Tensor:
        """float pixels [N, 224, 224, 1] (0..255) -> scores [N, len(SCOPE_CHECKS)] in the graph."""
        pooled = tf.nn.avg_pool2d(pixels, SCOPE_POOL, SCOPE_POOL, "VALID")
        return self.scores_pooled_tf(pooled)

    def scores_pooled_tf(self, pooled: tf.Tensor) -> tf.Tensor:
        outputs = self.net(pooled, training=False)
        centred = outputs[EMBEDDING] - tf.constant(self.mean, tf.float32)
        distance = tf.sqrt(tf.maximum(tf.reduce_sum(
            tf.matmul(centred, tf.constant(self.precision, tf.float32)) * centred, axis=1), 0.0))
        return tf.stack([*head_scores(outputs), distance], axis=1)

    def scores(self, pooled: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores of pooled images [N, 56, 56, 1] (numpy)."""
        parts = [self.scores_pooled_tf(tf.constant(pooled[i:i + batch_size], tf.float32)).numpy()
                 for i in range(0, len(pooled), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(SCOPE_CHECKS)), np.float32)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.net.save(folder / MODEL_FILE)
        np.savez(folder / STATS_FILE, mean=self.mean, precision=self.precision,
                 thresholds=self.thresholds)
        info = {**self.info, "checks": list(SCOPE_CHECKS),
                "thresholds": [float(t) for t in self.thresholds]}
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, folder: Path) -> ScopeScreen:
        net = keras.models.load_model(folder / MODEL_FILE, compile=False)
        stats = np.load(folder / STATS_FILE)
        info = json.loads((folder / INFO_FILE).read_text())
        if info.get("checks") != list(SCOPE_CHECKS):
            raise ValueError(f"{folder}: checks {info.get('checks')} are not {list(SCOPE_CHECKS)}")
        return cls(net, stats["mean"].astype(np.float32), stats["precision"].astype(np.float32),
                   stats["thresholds"].astype(np.float32), info)


def embeddings(net: keras.Model, pooled: np.ndarray, batch_size: int = 256) -> np.ndarray:
    parts = [net(tf.constant(pooled[i:i + batch_size], tf.float32), training=False)[EMBEDDING]
             .numpy() for i in range(0, len(pooled), batch_size)]
    return np.concatenate(parts)


def fit_embedding_stats(net: keras.Model, films: np.ndarray, *, copies: int = 2,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and shrunk precision of in-scope films' embeddings, with mild acquisition variation.

    The films are seen as they are and `copies` times under the training augmentation at half
    strength (no rotation or inversion), so ordinary differences between machines and periods
    sit inside the fitted spread rather than far from it.
    """
    tf.random.set_seed(seed)
    views = [films]
    kinds = tf.fill([len(films)], PAEDIATRIC)
    for _ in range(copies):
        views.append(_augment(tf.constant(films), kinds, strength=0.5).numpy())
    features = embeddings(net, np.concatenate(views))
    estimator = LedoitWolf().fit(features)
    return (estimator.location_.astype(np.float32),
            estimator.precision_.astype(np.float32))


def fit_thresholds(scores: np.ndarray, false_flag_rate: float) -> np.ndarray:
    """Per check: the (1 - rate) quantile of held-back in-scope scores; heads at least 0.5."""
    quantile = np.quantile(scores, 1.0 - false_flag_rate, axis=0)
    thresholds = quantile.copy()
    heads = [i for i, check in enumerate(SCOPE_CHECKS) if i < len(HEADS)]
    thresholds[heads] = np.maximum(quantile[heads], 0.5)
    # Just above the quantile, so "score >= threshold" flags at most that share.
    return np.nextafter(thresholds.astype(np.float32), np.float32(np.inf))


def train_screen(data: ScopeData, config: ScopeTrainConfig) -> ScopeScreen:
    """Train the network, fit the embedding statistics and the thresholds."""
    net = train_scope_net(data, config)
    mean, precision = fit_embedding_stats(net, data.train_films, seed=config.seed)
    screen = ScopeScreen(net, mean, precision, np.zeros(len(SCOPE_CHECKS), np.float32))
    calib = screen.scores(data.calib_films)
    screen.thresholds = fit_thresholds(calib, config.false_flag_rate)
    screen.info = {
        "input_pool": SCOPE_POOL, "width": config.width, "steps": config.steps,
        "batch_size": config.batch_size, "seed": config.seed, "holdout": list(config.holdout),
        "false_flag_rate": config.false_flag_rate, "counts": data.counts,
        "calibration_flag_rate": float(np.mean(np.any(calib >= screen.thresholds, axis=1))),
    }
    return screen


def flagged(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[N] bool: any check at or above its threshold."""
    return np.any(scores >= thresholds, axis=1)
