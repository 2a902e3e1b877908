"""A film's scope: the reasons it lies outside the validated population, in words, and the
refusal they may call for.

Reasons come from three producers (pixel checks at decode, DICOM header hints, the served model's
screening outputs); every path (HTTPS upload, STOW-RS, C-STORE, worker) judges them here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from shared.contract import (
    ADULT,
    ATYPICAL_IMAGE,
    BLANK_IMAGE,
    COLOUR_IMAGE,
    INVERTED,
    LATERAL_VIEW,
    NOISE_IMAGE,
    NOT_CHEST_RADIOGRAPH,
    REFUSING_REASONS,
    ROTATED,
    SCOPE_CHECKS,
    SCOPE_REASONS,
    SCOPE_SCORES,
    SCOPE_THRESHOLDS,
)
from shared.errors import NotChestRadiographError

# Where the reasons found before the worker runs are kept on the job record (`extra`): header
# hints read before de-identification removes them (e.g. Patient's Age).
SCOPE_HINTS_KEY = "scope_hints"

REASON_TEXT: dict[str, str] = {
    NOT_CHEST_RADIOGRAPH: "it does not look like a chest radiograph (another body part, a CT, "
                          "MR or ultrasound image, a photograph or a document)",
    BLANK_IMAGE: "the image is blank: (nearly) every pixel has the same value",
    NOISE_IMAGE: "the image is noise: its pixels show no anatomical structure",
    COLOUR_IMAGE: "the image is in colour (a photograph or a screenshot), not an X-ray",
    LATERAL_VIEW: "it is a lateral (side) view, not a frontal PA or AP view",
    ROTATED: "the film is not upright (rotated by 90, 180 or 270 degrees)",
    INVERTED: "the film's grey levels are inverted (bone dark)",
    ADULT: "the patient is an adult; the model was validated on children",
    ATYPICAL_IMAGE: "the image differs from the films the model was validated on",
}
assert set(REASON_TEXT) == set(SCOPE_REASONS)


def ordered(reasons: Iterable[str]) -> tuple[str, ...]:
    """Known reasons, each once, in SCOPE_REASONS order."""
    found = set(reasons)
    return tuple(reason for reason in SCOPE_REASONS if reason in found)


def refusing(reasons: Iterable[str]) -> tuple[str, ...]:
    return tuple(reason for reason in ordered(reasons) if reason in REFUSING_REASONS)


def describe(reasons: Iterable[str]) -> str:
    return "; ".join(REASON_TEXT[reason] for reason in ordered(reasons))


def refusal(reasons: Iterable[str], detail: str | None = None) -> NotChestRadiographError:
    """The error that refuses a film for its refusing `reasons` (the flags are listed too)."""
    found = ordered(reasons)
    why = describe(refusing(found)) + (f" ({detail})" if detail else "")
    message = (f"The image was not analysed: {why}. The model reads frontal (PA or AP) chest "
               "X-rays only; send the chest film itself.")
    return NotChestRadiographError(message, reasons=found)


def check_refusal(reasons: Iterable[str], detail: str | None = None) -> None:
    """Raise the refusal when any reason refuses; flags alone pass."""
    found = ordered(reasons)
    if refusing(found):
        raise refusal(found, detail)


def model_reasons(outputs: Mapping[str, Any], index: int = 0) -> tuple[str, ...]:
    """Reasons the served model's screening outputs raise for image `index` (none when absent).

    A score at or above its threshold raises that SCOPE_CHECKS column's reason.
    """
    if SCOPE_SCORES not in outputs or SCOPE_THRESHOLDS not in outputs:
        return ()
    scores = np.asarray(outputs[SCOPE_SCORES][index], dtype=np.float64).reshape(-1)
    thresholds = np.asarray(outputs[SCOPE_THRESHOLDS][index], dtype=np.float64).reshape(-1)
    if scores.shape != (len(SCOPE_CHECKS),) or thresholds.shape != scores.shape:
        raise ValueError(f"{SCOPE_SCORES} and {SCOPE_THRESHOLDS} must have "
                         f"{len(SCOPE_CHECKS)} columns, got {scores.shape} and {thresholds.shape}")
    raised = np.isfinite(scores) & np.isfinite(thresholds) & (scores >= thresholds)
    return ordered(reason for reason, hit in zip(SCOPE_CHECKS, raised, strict=True) if hit)
