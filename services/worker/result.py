"""Turning the model's answer for one image into a `PredictionResult` (label, subtype, model)."""

from __future__ import annotations

import numpy as np

from services.worker.errors import ModelServerError
from services.worker.grpc_serving import ServingAnswer
from shared.contract import CLASS_NAMES, CLASS_PROBABILITIES, PNEUMONIA_PROBABILITY, THRESHOLD
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult


def _probability(value: float, what: str) -> float:
    if not np.isfinite(value) or value < -1e-4 or value > 1 + 1e-4:
        raise ModelServerError(f"The model returned {value!r} as {what}, not a probability.")
    return float(np.clip(value, 0.0, 1.0))  # float32 sums can land a hair above 1


def label_for(pneumonia_probability: float, threshold: float) -> str:
    """The model's own operating point decides: at or above the threshold is PNEUMONIA."""
    return "PNEUMONIA" if pneumonia_probability >= threshold else "NORMAL"


def subtype_for(label: str, probabilities: ClassProbabilities) -> str | None:
    if label != "PNEUMONIA":
        return None
    return "viral" if probabilities.viral > probabilities.bacterial else "bacterial"


def build_result(
    answer: ServingAnswer, index: int = 0, timings_ms: dict[str, float] | None = None
) -> PredictionResult:
    """The result for image `index` of the batch the model answered."""
    outputs = answer.outputs
    p = _probability(float(outputs[PNEUMONIA_PROBABILITY][index]), PNEUMONIA_PROBABILITY)
    threshold = _probability(float(outputs[THRESHOLD][index]), THRESHOLD)
    row = np.asarray(outputs[CLASS_PROBABILITIES][index], dtype=np.float64)
    if row.shape != (len(CLASS_NAMES),):
        raise ModelServerError(
            f"{CLASS_PROBABILITIES} has shape {row.shape}, expected ({len(CLASS_NAMES)},).")
    classes = ClassProbabilities(
        **{
            name: _probability(value, f"the {name} probability")
            for name, value in zip(CLASS_NAMES, row, strict=True)
        }
    )
    label = label_for(p, threshold)
    return PredictionResult(
        label=label,
        pneumonia_probability=p,
        class_probabilities=classes,
        subtype=subtype_for(label, classes),
        threshold=threshold,
        model=ModelRef(name=answer.model_name, version=answer.version),
        timings_ms=dict(timings_ms or {}),
    )
