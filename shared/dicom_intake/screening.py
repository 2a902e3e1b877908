"""Which films the model may see: the SOP classes accepted, and the screening of an upload.

The model reads frontal (PA/AP) chest X-rays. An uploaded DICOM whose SOP class or modality is not
a projection radiograph is refused; so is any film, of any format, with a refusing scope reason
from its pixels or its header (shared.imaging.pixel_checks, shared.imaging.header_hints). Absent
or empty header attributes are given the benefit of the doubt, since many modalities leave them
blank; the pixels are checked whatever the header says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from shared.contract import LATERAL_VIEW, NOT_CHEST_RADIOGRAPH
from shared.imaging import DecodedImage
from shared.imaging.header_hints import header_text
from shared.scope import check_refusal

# The storage SOP classes accepted over C-STORE and STOW-RS.
ACCEPTED_SOP_CLASSES = (DigitalXRayImageStorageForPresentation,
                        DigitalXRayImageStorageForProcessing, ComputedRadiographyImageStorage)

# A file uploaded over HTTPS may also be a viewer's Secondary Capture export of the film.
UPLOAD_SOP_CLASSES = (*ACCEPTED_SOP_CLASSES, SecondaryCaptureImageStorage)
# Projection radiography, or "other" (what Secondary Capture exports usually say).
UPLOAD_MODALITIES = frozenset({"CR", "DX", "OT"})


def _header_details(metadata: Mapping[str, Any], reasons: tuple[str, ...]) -> list[str]:
    """The header facts behind the reasons, in words for the sender."""
    details = []
    if NOT_CHEST_RADIOGRAPH in reasons and header_text(metadata, "BodyPartExamined"):
        details.append(f"its Body Part Examined is {header_text(metadata, 'BodyPartExamined')}")
    if LATERAL_VIEW in reasons and header_text(metadata, "ViewPosition"):
        details.append(f"its View Position is {header_text(metadata, 'ViewPosition')}, "
                       "not PA or AP")
    return details


def screen_upload(decoded: DecodedImage) -> None:
    """Refuse (NotChestRadiographError, 422) a film the model must not read; flags pass.

    For DICOM, the header facts are checked too: another SOP class or modality than a projection
    radiograph refuses as `not_chest_radiograph`.
    """
    metadata = decoded.metadata
    reasons = list(decoded.scope_reasons)
    details: list[str] = []
    if metadata.get("format") == "dicom":
        sop_class = header_text(metadata, "SOPClassUID")
        modality = header_text(metadata, "Modality")
        if sop_class and sop_class not in UPLOAD_SOP_CLASSES:
            reasons.append(NOT_CHEST_RADIOGRAPH)
            details.append("the DICOM SOP class or modality is not a projection radiograph "
                           f"(SOP class {sop_class})")
        elif modality and modality not in UPLOAD_MODALITIES:
            reasons.append(NOT_CHEST_RADIOGRAPH)
            details.append("the DICOM SOP class or modality is not a projection radiograph "
                           f"(modality {modality})")
        details += _header_details(metadata, decoded.header_reasons)
    check_refusal(reasons, "; ".join(details) or None)
