"""One chest X-ray file as a record: its label, subtype, patient, split and duplicate group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.trainer.data.naming import Subtype

Label = Literal["NORMAL", "PNEUMONIA"]
LABELS: tuple[Label, ...] = ("NORMAL", "PNEUMONIA")


@dataclass
class XrayRecord:
    """One image file with what its folder and name say about it.

    `dup_group` names the group of files with identical pixels (None when the image is unique);
    it is filled by `assign_duplicate_groups`. A film a site's reader confirmed has its `site` and
    its storage `key` (`services.trainer.data.manifest`); a base data set file has neither.
    """

    path: Path
    label: Label
    subtype: Subtype | None
    patient: str
    dup_group: str | None = None
    split: str | None = None
    site: str | None = None
    key: str | None = None

    @property
    def class_index(self) -> int | None:
        """0 normal, 1 bacterial, 2 viral; None for pneumonia whose subtype is unknown."""
        if self.label == "NORMAL":
            return 0
        return {"bacterial": 1, "viral": 2}.get(self.subtype or "")

    @property
    def relative_path(self) -> str:
        """`split/LABEL/name` (or `LABEL/name`, or a confirmed film's storage key): the same for
        any copy of the data set."""
        if self.key is not None:
            return self.key
        return "/".join(p for p in (self.split, self.path.parent.name, self.path.name) if p)
