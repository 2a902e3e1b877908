"""Which received instances the model may see: frontal chest radiographs only.

The model was trained on frontal (PA/AP) chest X-rays. An instance whose Body Part Examined names
another body part, or whose View Position is not frontal, is kept out; absent or empty attributes
are given the benefit of the doubt, since many modalities leave them blank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from shared.errors import NotChestRadiographError

# The storage SOP classes accepted over C-STORE and STOW-RS.
ACCEPTED_SOP_CLASSES = (DigitalXRayImageStorageForPresentation,
                        DigitalXRayImageStorageForProcessing, ComputedRadiographyImageStorage)

CHEST_BODY_PARTS = frozenset({"CHEST"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})


# A file uploaded over HTTPS may also be a viewer's Secondary Capture export of the film.
UPLOAD_SOP_CLASSES = (*ACCEPTED_SOP_CLASSES, SecondaryCaptureImageStorage)
# Projection radiography, or "other" (what Secondary Capture exports usually say).
UPLOAD_MODALITIES = frozenset({"CR", "DX", "OT"})

_REFUSALS = {
    "not_radiograph": "its SOP class or modality is not a projection radiograph ({detail})",
    "not_chest": "its Body Part Examined is {detail}",
    "not_frontal": "its View Position is {detail}, not PA or AP",
}


def _text(dataset: Dataset | Mapping[str, Any], keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip().upper()


def rejection_reason(dataset: Dataset | Mapping[str, Any]) -> str | None:
    """Why this instance must not go to the model (a stable slug), or None when it may."""
    body_part = _text(dataset, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return "not_chest"
    view = _text(dataset, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return "not_frontal"
    return None


def check_uploaded_dicom(metadata: Mapping[str, Any]) -> None:
    """Refuse an uploaded DICOM file whose header says it is not a frontal chest radiograph.

    `metadata` is what `shared.imaging.decode_xray` read from the header; JPEG and PNG uploads
    carry no such facts and pass.
    """
    if metadata.get("format") != "dicom":
        return
    sop_class, modality = _text(metadata, "SOPClassUID"), _text(metadata, "Modality")
    reason: str | None
    if sop_class and sop_class not in UPLOAD_SOP_CLASSES:
        reason, detail = "not_radiograph", f"SOP class {sop_class}"
    elif modality and modality not in UPLOAD_MODALITIES:
        reason, detail = "not_radiograph", f"modality {modality}"
    else:
        reason = rejection_reason(metadata)
        detail = _text(metadata, "BodyPartExamined" if reason == "not_chest" else "ViewPosition")
    if reason is not None:
        why = _REFUSALS[reason].format(detail=detail)
        raise NotChestRadiographError(
            f"The DICOM file is not a frontal chest radiograph: {why}; the model reads frontal "
            "(PA or AP) chest X-rays only.")
