"""`probe_head` (LP-FT): the head starts from a logistic regression on the pooled features."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from services.trainer.modeling.cnn_training import predict_logits, probe_head
from shared.contract import UNKNOWN_SUBTYPE


def three_kinds(per_class: int = 12, seed: int = 0):
    """Noisy films whose class shows in their pattern: vertical stripes, horizontal stripes and
    a checkerboard, each at a random phase (the network standardises brightness away)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(32)
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            rows = (grid[:, None] + rng.integers(4)) // 2 % 2
            cols = (grid[None, :] + rng.integers(4)) // 2 % 2
            pattern = [cols + 0 * rows, rows + 0 * cols, rows ^ cols][label]
            noisy = 60 + 120 * pattern + rng.normal(0, 20, (32, 32))
            images.append(np.clip(noisy, 0, 255).astype(np.uint8)[..., None])
            labels.append(label)
    return np.stack(images), np.array(labels)


def network():
    """A network of the recipe's head shape (`gap` -> `logits`) on fixed edge detectors whose
    pooled responses tell the three patterns apart; the head starts untrained."""
    kernels = np.array([[[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]], np.float32)
    kernels = np.concatenate([kernels, -kernels]).transpose(1, 2, 0)[:, :, None, :] / 255.0
    inputs = keras.Input((32, 32, 1))
    edges = keras.layers.Conv2D(6, 2, activation="relu", use_bias=False, trainable=False)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(edges(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    edges.set_weights([kernels])
    return model


def test_the_probed_head_separates_classes_the_untrained_head_does_not():
    images, labels = three_kinds()
    model = network()
    before = predict_logits(model, images).argmax(axis=1)
    assert (before == labels).mean() < 0.9
    probe_head(model, images, labels)
    test_images, test_labels = three_kinds(seed=1)
    after = predict_logits(model, test_images).argmax(axis=1)
    assert (after == test_labels).mean() == 1.0


def test_films_of_unknown_subtype_are_left_out_and_all_classes_are_needed():
    images, labels = three_kinds()
    unknown = labels.copy()
    unknown[labels == 2] = UNKNOWN_SUBTYPE  # no viral film left with a known class
    with pytest.raises(ValueError, match="all three classes"):
        probe_head(network(), images, unknown)
    some_unknown = labels.copy()
    some_unknown[:3] = UNKNOWN_SUBTYPE
    probe_head(network(), images, some_unknown)  # the rest still has all three classes


def test_the_recipe_field_can_be_set_from_the_command_line():
    from services.trainer.cli.training import recipe_overrides

    assert recipe_overrides(["probe_head=true"]) == {"probe_head": True}
