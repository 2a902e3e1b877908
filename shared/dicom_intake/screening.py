"""Which received instances the model may see: frontal chest radiographs only.

The model was trained on frontal (PA/AP) chest X-rays. An instance whose Body Part Examined names
another body part, or whose View Position is not frontal, is kept out; absent or empty attributes
are given the benefit of the doubt, since many modalities leave them blank.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

# The storage SOP classes accepted over C-STORE and STOW-RS.
ACCEPTED_SOP_CLASSES = (DigitalXRayImageStorageForPresentation,
                        DigitalXRayImageStorageForProcessing, ComputedRadiographyImageStorage)

CHEST_BODY_PARTS = frozenset({"CHEST"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip().upper()


def rejection_reason(dataset: Dataset) -> str | None:
    """Why this instance must not go to the model (a stable slug), or None when it may."""
    body_part = _text(dataset, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return "not_chest"
    view = _text(dataset, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return "not_frontal"
    return None
