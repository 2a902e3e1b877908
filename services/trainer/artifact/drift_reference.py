"""A version's reference distribution for the drift check.

`python -m services.trainer drift-reference --model DIR [--data DIR] [--films gate|all]` runs the
exported version in `DIR` over validation films (by default the gate set of the data set: the
same patients `retrain` holds out of training, `CXR_GATE_FRACTION` and `CXR_GATE_SEED`) and writes
`DIR/assets.extra/drift_reference.json` (`shared.drift.DriftReference`). The retraining pipeline
writes the same file into every version it exports, from its gate set; `reexport` carries it to
the new version. Never compute it on a site's acceptance films: the check compares a site against
what the model was validated on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.trainer.data.dataset import data_fingerprint, load_images, scan_dataset
from services.trainer.data.splits import split_gate_set
from services.trainer.settings import get_settings
from shared.contract import ASSETS_EXTRA, DRIFT_REFERENCE_FILE, INPUT_NAME, SERVING_SIGNATURE
from shared.drift import DriftReference, batch_statistics

TRAINING_SPLITS = ("train", "val")  # what `retrain` reads of a Kaggle-layout data set


def reference_path(model_dir: Path) -> Path:
    return Path(model_dir) / ASSETS_EXTRA / DRIFT_REFERENCE_FILE


def model_outputs(model_dir: str | Path, images: np.ndarray,
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every output of the version's `serving_default` signature for uint8 `[N, S, S, 1]`."""
    import tensorflow as tf  # heavy: only the callers that score models pay for it

    serve = tf.saved_model.load(str(model_dir)).signatures[SERVING_SIGNATURE]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = serve(**{INPUT_NAME: tf.constant(images[start:start + batch_size],
                                                 dtype=tf.uint8)})
        for name, tensor in batch.items():
            parts.setdefault(name, []).append(tensor.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def compute_reference(model_dir: str | Path, images: np.ndarray,
                      source: Mapping[str, Any]) -> DriftReference:
    """The version's statistics on `images` (its validation films, as model inputs)."""
    if len(images) == 0:
        raise ValueError("no films to compute a drift reference on")
    outputs = model_outputs(model_dir, images)
    return DriftReference.from_films(batch_statistics(images, outputs), source)


def write_reference(model_dir: str | Path, reference: DriftReference) -> Path:
    """Written whole (a temporary file renamed), beside the SavedModel."""
    path = reference_path(Path(model_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(reference.to_json() + "\n")
    partial.replace(path)
    return path


def gate_images(data_dir: Path, films: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The model inputs of the chosen films of `data_dir`, and what they were."""
    settings = get_settings()
    # The splits retraining reads (never `test`), or a flat NORMAL/PNEUMONIA folder.
    present = [name for name in TRAINING_SPLITS if (Path(data_dir) / name).is_dir()]
    records = scan_dataset(data_dir, present or None)
    if films == "gate":
        _, records = split_gate_set(records, settings.gate_fraction, settings.gate_seed)
        described = (f"gate set of the data set (gate fraction {settings.gate_fraction}, "
                     f"seed {settings.gate_seed})")
    else:
        described = "every film of the data set"
    if not records:
        raise ValueError(f"no labelled films under {data_dir}")
    source = {"films": described, "data_fingerprint": data_fingerprint(records)}
    return load_images(records, size=settings.image_size), source
