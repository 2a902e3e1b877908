"""`ema_momentum`: the trained network ends with the moving average of its step weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from services.trainer.modeling.cnn_training import fit_cnn
from services.trainer.modeling.config import TrainConfig


class StepWeights(keras.callbacks.Callback):
    """The trainable weights after every optimiser step."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps.append([w.numpy() for w in self.model.trainable_weights])


def tiny_data(seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(16, 32, 32, 1), dtype=np.uint8)
    return images, np.array([0, 1, 2, 1] * 4)


def fit(ema_momentum: float | None):
    images, labels = tiny_data(0)
    val_images, val_labels = tiny_data(1)
    config = TrainConfig(backbone="custom", width=4, image_size=32, batch_size=4, epochs=3,
                         patience=5, augment=False, ema_momentum=ema_momentum, verbose=0)
    record = StepWeights()
    fitted = fit_cnn(config, images, labels, val_images, val_labels, callbacks=[record])
    return fitted, record.steps


def test_the_network_ends_with_the_moving_average_of_its_step_weights():
    momentum = 0.6
    fitted, steps = fit(momentum)
    assert len(steps) == 3 * 4
    average = [w.copy() for w in steps[0]]  # the first step starts the average
    for weights in steps[1:]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights, strict=True)]
    final = [w.numpy() for w in fitted.model.trainable_weights]
    for kept, expected in zip(final, average, strict=True):
        np.testing.assert_allclose(kept, expected, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(kept, last) for kept, last in zip(final, steps[-1], strict=True))
    assert fitted.best_epoch == len(fitted.history)


def test_without_it_the_network_keeps_one_epochs_weights():
    fitted, steps = fit(None)
    epoch_ends = steps[3::4]
    final = [w.numpy() for w in fitted.model.trainable_weights]
    kept = epoch_ends[fitted.best_epoch - 1]
    for weights, expected in zip(final, kept, strict=True):
        np.testing.assert_array_equal(weights, expected)


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.5])
def test_a_momentum_outside_the_open_interval_is_refused(momentum):
    with pytest.raises(ValueError, match="ema_momentum"):
        TrainConfig(ema_momentum=momentum)
