"""The model the repository ships screens its own input: what it says of real films turned,
inverted or replaced by what is not a film at all (no retraining; the SavedModel as served)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.trainer.registry.bootstrap import bundled_model
from shared.contract import INPUT_NAME, MODEL_NAME, SERVING_SIGNATURE
from shared.imaging import DecodeLimits, decode_xray, to_model_input
from shared.scope import model_reasons

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO_ROOT / "data" / "sample").glob("*/*.jpeg"))


@pytest.fixture(scope="module")
def serve():
    import tensorflow as tf

    _, folder = bundled_model(REPO_ROOT / "models", MODEL_NAME)
    signature = tf.saved_model.load(str(folder)).signatures[SERVING_SIGNATURE]

    def reasons_of(images: np.ndarray) -> list[tuple[str, ...]]:
        outputs = {name: tensor.numpy() for name, tensor in
                   signature(**{INPUT_NAME: tf.constant(images, tf.uint8)}).items()}
        return [model_reasons(outputs, i) for i in range(len(images))]

    return reasons_of


@pytest.fixture(scope="module")
def films() -> np.ndarray:
    limits = DecodeLimits()
    return np.stack([to_model_input(decode_xray(path.read_bytes(), limits).pixels)
                     for path in SAMPLES])


def test_upright_sample_films_are_in_scope_and_none_is_refused(serve, films):
    reasons = serve(films)
    flagged = [found for found in reasons if found]
    # A flag answers with a statement; only a refusing reason would withhold the answer.
    assert len(films) == 40 and len(flagged) <= 4, flagged
    assert not any({"not_chest_radiograph", "lateral_view"} & set(found) for found in reasons)


def test_turned_films_are_flagged_as_rotated(serve, films):
    for quarter_turns in (1, 2, 3):
        turned = np.rot90(films, quarter_turns, axes=(1, 2))
        rotated = sum("rotated" in reasons for reasons in serve(np.ascontiguousarray(turned)))
        assert rotated >= 38, (quarter_turns, rotated)


def test_inverted_films_are_flagged_as_inverted(serve, films):
    inverted = sum("inverted" in reasons for reasons in serve(255 - films))
    assert inverted >= 38


def test_what_is_not_a_film_is_refused_or_flagged(serve, films):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, films[:4].shape, dtype=np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, 224, dtype=np.uint8)[None, :, None],
                           (224, 224, 1))
    checker = ((np.indices((224, 224)).sum(axis=0) // 28) % 2 * 255).astype(np.uint8)[..., None]
    images = np.concatenate([noise, np.stack([ramp, checker])])
    for reasons in serve(images):
        assert {"not_chest_radiograph", "atypical_image"} & set(reasons), reasons
