"""What the Kermany/Kaggle chest X-ray file names say: patient, pneumonia subtype, series.

`person1234_bacteria_3191.jpeg` is patient `person1234`, bacterial; `person12_virus_44.jpeg` is
viral; `IM-0115-0001.jpeg` is patient `IM-0115`; `NORMAL2-IM-0588-0001.jpeg` is `NORMAL2-IM-0588`.
A name that matches none of these is its own patient, with no subtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

Subtype = Literal["bacterial", "viral"]

_SUBTYPES: dict[str, Subtype] = {"bacteria": "bacterial", "virus": "viral"}

# Each pattern names `patient`, `series` and `number`; `kind` where the name carries a subtype.
_PATTERNS = (
    re.compile(r"^(?P<patient>(?P<series>person)(?P<number>\d+))_(?P<kind>bacteria|virus)(?:_\d+)+$",
               re.IGNORECASE),
    re.compile(r"^(?P<patient>(?P<series>NORMAL\d*-IM)-(?P<number>\d+))(?:-\d+)+$", re.IGNORECASE),
    re.compile(r"^(?P<patient>(?P<series>IM)-(?P<number>\d+))(?:-\d+)+$", re.IGNORECASE),
)


@dataclass(frozen=True)
class ParsedName:
    """The facts a file name carries; `series` and `number` order patients within one numbering."""

    patient: str
    subtype: Subtype | None
    series: str | None
    number: int | None


def parse_file_name(name: str | PurePath) -> ParsedName:
    """Patient, subtype and patient number from a file name (with or without an extension)."""
    stem = _stem(PurePath(name).name)
    for pattern in _PATTERNS:
        match = pattern.match(stem)
        if match:
            kind = match.groupdict().get("kind")
            return ParsedName(
                patient=match["patient"],
                subtype=_SUBTYPES[kind.lower()] if kind else None,
                series=match["series"].lower(),
                number=int(match["number"]),
            )
    return ParsedName(patient=stem, subtype=None, series=None, number=None)


def is_image_file_name(name: str) -> bool:
    """True for names the decoder may read: .jpeg/.jpg/.png/.dcm or no extension; never hidden."""
    return not name.startswith(".") and _image_suffix(name) is not None


def _stem(file_name: str) -> str:
    suffix = _image_suffix(file_name)
    return file_name[: -len(suffix)] if suffix else file_name


def _image_suffix(file_name: str) -> str | None:
    """The image extension ("" for none), or None for a file that is not an image by its name."""
    suffix = PurePath(file_name).suffix
    # DICOM files are often named by their UID ("1.2.840.113619.2.55"): a numeric suffix is no
    # extension at all.
    if not suffix or suffix[1:].isdigit():
        return ""
    return suffix if suffix.lower() in _IMAGE_SUFFIXES else None


_IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm"})
