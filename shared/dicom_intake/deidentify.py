"""De-identification of a DICOM instance: PS3.15 Annex E Basic Application Level Confidentiality
Profile (table E.1-1) with the Retain Patient Characteristics Option for Patient's Age only.

The table and its actions come from `dicom-anonymizer` (`dicomfields_2026c`: every attribute the
standard lists, with its action D, Z, X, U or a combination). One walk applies it at every nesting
level; on top of the library: UIDs are replaced by UIDs derived from the originals (the same in
every process, so references between instances and the job identity stay consistent), sequences
are cleaned item by item instead of blanked, overlay planes and private tags are removed, and
Patient's Age is kept (capped at 90 years) because the screening reads it. What was done is
recorded (Patient Identity Removed, De-identification Method (Code) Sequence, Longitudinal
Temporal Information Modified). Pixel data is not touched: burned-in text is not cleaned.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from copy import deepcopy
from functools import cache

from dicomanonymizer import simpledicomanonymizer as profile
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid

TABLE_VERSION = "dicomfields_2026c"
# De-identification Method is LO (at most 64 characters a value): one value per part.
METHOD = ("DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile",
          "Retain Patient Characteristics Option (Patient's Age)")
METHOD_CODES = (("113100", "DCM", "Basic Application Confidentiality Profile"),
                ("113108", "DCM", "Retain Patient Characteristics Option"))
# Kept although the table removes them: what the screening reads (Retain Patient Characteristics).
RETAINED = frozenset({"PatientAge"})
OLDEST_AGE_YEARS = 90  # older ages are shown as this one (an age over 89 narrows who it is)

Action = Callable[[Dataset, tuple[int, int]], None]
_AGE = re.compile(r"^(\d{3})Y$")


def replacement_uid(original: str) -> str:
    """The UID that stands in for `original` in de-identified copies (same input, same output)."""
    return generate_uid(entropy_srcs=["cxr-deidentify", str(original)])


@cache
def _table() -> tuple[dict[tuple[int, int], str], list[tuple[tuple[int, ...], str]]]:
    """Tag -> action category (D_TAGS, X_TAGS, ...), and the masked ranges (overlays, curves)."""
    categories = dicom_anonymization_database_selector(TABLE_VERSION)
    exact: dict[tuple[int, int], str] = {}
    ranges: list[tuple[tuple[int, ...], str]] = []
    for category, tags in categories.items():
        if category == "ALL_TAGS":
            continue
        for tag in tags:
            if len(tag) == 4:
                ranges.append((tuple(tag), category))
            else:
                exact[(tag[0], tag[1])] = category
    return exact, ranges


def _category(tag: BaseTag) -> str | None:
    exact, ranges = _table()
    found = exact.get((tag.group, tag.element))
    if found is not None:
        return found
    for (group, element, group_mask, element_mask), category in ranges:
        if (tag.group & group_mask == group & group_mask
                and tag.element & element_mask == element & element_mask):
            return category
    return None


def _empty(dataset: Dataset, tag: tuple[int, int]) -> None:
    """Z: present with a zero-length value (the library writes dummy dates and zeros instead)."""
    dataset[tag].value = None


# The action for each category, for elements that are neither UIDs nor sequences: Z (and X/Z, and
# Z/D, since Patient ID is type 2 in the X-ray IODs) empties; D and X/D, X/Z/D are the library's
# dummy values (a type 1 attribute stays present).
_ACTIONS: dict[str, Action] = {
    "D_TAGS": profile.replace, "Z_TAGS": _empty, "X_TAGS": profile.delete,
    "Z_D_TAGS": _empty, "X_Z_TAGS": _empty,
    "X_D_TAGS": profile.delete_or_replace, "X_Z_D_TAGS": profile.delete_or_empty_or_replace,
    "X_Z_U_STAR_TAGS": _empty,
}


def _is_overlay(tag: BaseTag) -> bool:
    """Overlay planes (groups 6000-601E): labels, descriptions and bits the model does not use."""
    return 0x6000 <= tag.group <= 0x601E and tag.group % 2 == 0


def _replace_uids(element: DataElement) -> None:
    if element.VM > 1:
        element.value = [replacement_uid(uid) for uid in element.value]
    elif element.value:
        element.value = replacement_uid(element.value)


def _capped_age(element: DataElement) -> None:
    match = _AGE.match(str(element.value or ""))
    if match and int(match.group(1)) > OLDEST_AGE_YEARS:
        element.value = f"{OLDEST_AGE_YEARS:03d}Y"


def _clean(dataset: Dataset) -> None:
    """Apply the profile to every element of `dataset`, and to the items of its sequences."""
    for tag in list(dataset.keys()):
        element = dataset[tag]
        if tag.is_private:
            continue  # removed all at once afterwards
        if _is_overlay(tag):
            del dataset[tag]
            continue
        if element.keyword in RETAINED:
            _capped_age(element)
            continue
        category = _category(tag)
        if element.VR == "SQ":
            if category == "X_TAGS":
                del dataset[tag]
            elif category in ("Z_TAGS", "X_Z_TAGS"):
                element.value = Sequence()
            else:  # kept, replaced or holding instance UIDs: clean each item
                for item in element.value:
                    _clean(item)
        elif category is None:
            continue
        elif element.VR == "UI":
            if category == "X_TAGS":
                del dataset[tag]
            else:  # U, and D / X/Z/U* on a UID: a consistent replacement
                _replace_uids(element)
        else:
            try:
                _ACTIONS.get(category, profile.replace)(dataset, (tag.group, tag.element))
            except NotImplementedError:  # a VR the library has no dummy value for: remove it
                del dataset[tag]


def deidentify(dataset: Dataset) -> Dataset:
    """A de-identified copy of `dataset` (the original is not changed)."""
    copy = deepcopy(dataset)
    copy.remove_private_tags()
    _clean(copy)
    if getattr(copy, "file_meta", None) is not None:
        _clean(copy.file_meta)
    copy.PatientIdentityRemoved = "YES"
    copy.DeidentificationMethod = list(METHOD)
    codes = []
    for value, scheme, meaning in METHOD_CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
        codes.append(code)
    copy.DeidentificationMethodCodeSequence = Sequence(codes)
    copy.LongitudinalTemporalInformationModified = "REMOVED"
    return copy
