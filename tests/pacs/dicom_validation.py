"""Checks of a DICOM object against its IOD, from the standard's tables that highdicom ships.

For every module the IOD makes mandatory: each type 1 and type 2 attribute present at every
nesting level (`highdicom`'s `check_required_attributes`) and each top-level type 1 attribute not
empty; every value valid for its VR (pydicom's `validate_value`); and for an SR, the root content
item's attributes and the content tree read back by highdicom. Conditional (type 1C/2C)
attributes are not checked: the tables do not state their conditions.
"""

from __future__ import annotations

import highdicom as hd
from highdicom._standard_utils import (
    check_required_attributes,
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

TREE_MODULES = frozenset({"sr-document-content"})
SR_ROOT = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentSequence")
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                      "TM", "UC", "UI", "UR", "UT"})
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34": hd.sr.Comprehensive3DSR}


def iod_problems(dataset: Dataset) -> list[str]:
    """What makes `dataset` an invalid instance of its IOD (empty: none found)."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    iod = get_sop_class_iod_map().get(sop_class)
    if iod is None:
        return [f"SOP Class UID {sop_class!r} names no IOD"]
    problems = []
    attributes = get_module_attribute_map()
    for module in get_iod_module_map()[iod]:
        if module["usage"] != "M":
            continue
        if module["key"] in TREE_MODULES:
            # The table merges every content item's value types into one list (each item would
            # need all of them): the root is checked here and the tree read back below.
            problems += [f"{module['key']}: {keyword} missing or empty at the root"
                         for keyword in SR_ROOT if not dataset.get(keyword)]
            continue
        try:
            check_required_attributes(dataset, module["key"], recursive=True)
        except AttributeError as exc:
            problems.append(f"{module['key']}: {exc}")
        for attribute in attributes[module["key"]]:
            keyword = attribute["keyword"]
            if (attribute["type"] == "1" and not attribute["path"] and keyword in dataset
                    and dataset[keyword].is_empty):
                problems.append(f"{module['key']}: type 1 {keyword} is empty")
    problems += _value_problems(dataset)
    reader = SR_CLASSES.get(sop_class)
    if reader is not None:
        try:
            reader.from_dataset(dataset)
        except Exception as exc:  # noqa: BLE001 - any failure to read the tree is the finding
            problems.append(f"SR content: {type(exc).__name__}: {exc}")
    return problems


def _value_problems(dataset: Dataset) -> list[str]:
    """Each element's value checked against its VR (length, characters, format)."""
    problems = []
    for element in dataset.iterall():
        if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.is_empty:
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            if element.VR in TEXT_VRS:
                value = str(value)  # as written: the checks read the text
            try:
                validate_value(element.VR, value, config.RAISE)
            except ValueError as exc:
                problems.append(f"{element.keyword or element.tag}: {exc}")
    return problems
