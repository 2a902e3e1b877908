"""Scope hints from a DICOM header: a body part other than the chest, a view other than frontal,
an adult patient. Headers are hints (empty attributes pass: many modalities leave them blank);
the pixels and the model still decide for every film.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from shared.contract import ADULT, LATERAL_VIEW, NOT_CHEST_RADIOGRAPH

CHEST_BODY_PARTS = frozenset({"CHEST"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
ADULT_AGE_YEARS = 18
# Age String (PS3.5 6.2): nnnD, nnnW, nnnM or nnnY.
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def header_text(dataset: Dataset | Mapping[str, Any], keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip().upper()


def age_in_years(value: str) -> float | None:
    """An Age String (e.g. '045Y', '006M') in years; None when empty or malformed."""
    text = value.strip().upper()
    if len(text) < 2 or text[-1] not in _DAYS_PER_UNIT or not text[:-1].isdigit():
        return None
    return int(text[:-1]) * _DAYS_PER_UNIT[text[-1]] / 365.25


def header_reasons(dataset: Dataset | Mapping[str, Any]) -> tuple[str, ...]:
    """The scope reasons a DICOM header raises (shared.contract codes, SCOPE_REASONS order)."""
    found: list[str] = []
    body_part = header_text(dataset, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        found.append(NOT_CHEST_RADIOGRAPH)
    view = header_text(dataset, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        found.append(LATERAL_VIEW)
    age = age_in_years(header_text(dataset, "PatientAge"))
    if age is not None and age >= ADULT_AGE_YEARS:
        found.append(ADULT)
    return tuple(found)
