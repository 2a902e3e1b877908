"""A site's operating point for one model version: a monotone calibration and a threshold.

The trainer fits it on the site's labelled acceptance set
(`services.trainer.evaluation.site_calibration`) and publishes it beside the served SavedModel,
at `site_operating_point_key`; the worker reads it from there (no MLflow) and answers with the
calibrated probability and the site's threshold.

The calibration is Platt scaling on the model's logit: p_site = sigmoid(a * logit(p) + b), a > 0
(so it never changes the ranking); `identity` is a = 1, b = 0. The threshold is in the calibrated
scale: PNEUMONIA when p_site >= threshold.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contract import ASSETS_EXTRA, DEFAULT_SITE, OPERATING_POINT_FILE, SITES_DIR
from shared.schemas import UTCDateTime

# Probabilities are clipped this far from 0 and 1 before taking their logit.
LOGIT_EPS = 1e-6
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SITE_NAME = re.compile(SITE_NAME_PATTERN)


def check_site_name(name: str) -> str:
    """`name` when it is a usable site name (it becomes a folder name), else ValueError."""
    if not _SITE_NAME.match(name):
        raise ValueError(f"site name {name!r} must match {SITE_NAME_PATTERN}")
    return name


def logit(p: float) -> float:
    p = min(max(float(p), LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Calibration(BaseModel):
    """p -> sigmoid(slope * logit(p) + intercept); `refused` says why a fit was not used."""

    method: Literal["platt", "identity"] = "identity"
    slope: float = Field(default=1.0, gt=0)
    intercept: float = 0.0
    refused: str | None = None

    def apply(self, p: float) -> float:
        if self.method == "identity":
            return float(min(max(p, 0.0), 1.0))
        return sigmoid(self.slope * logit(p) + self.intercept)


class OperatingPoint(BaseModel):
    """`operating_point.json`: the calibration, the threshold and where they came from."""

    model_config = ConfigDict(protected_namespaces=())

    site: str = Field(pattern=SITE_NAME_PATTERN)
    model_name: str
    model_version: int | None = None
    calibration: Calibration
    threshold: float = Field(ge=0.0, le=1.0)
    target_sensitivity: float = Field(gt=0.0, le=1.0)
    # the probability the threshold holds the target (None: it holds it on average)
    sensitivity_confidence: float | None = Field(default=None, gt=0.0, lt=1.0)
    model_threshold: float = Field(ge=0.0, le=1.0)
    fitted_at: UTCDateTime
    data_fingerprint: str
    n: int = Field(ge=1)
    n_pneumonia: int = Field(ge=0)
    n_normal: int = Field(ge=0)

    def calibrate(self, p: float) -> float:
        return self.calibration.apply(p)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> OperatingPoint:
        return cls.model_validate_json(data)


def site_operating_point_path(site: str) -> str:
    """The file's path inside a version folder: `assets.extra/sites/<site>/operating_point.json`."""
    return f"{ASSETS_EXTRA}/{SITES_DIR}/{check_site_name(site)}/{OPERATING_POINT_FILE}"


def site_operating_point_key(model_name: str, version: int, site: str) -> str:
    """The file's key under the serving base (`CXR_MODEL_BASE_PATH`)."""
    return f"{model_name}/{version}/{site_operating_point_path(site)}"


def parse_site_map(text: str, what: str) -> dict[str, str]:
    """`"key:site,key2:site2"` as a dict; a malformed entry or site name is a ValueError."""
    mapping: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        key, sep, site = entry.rpartition(":")
        if not sep or not key.strip() or not site.strip():
            raise ValueError(f"{what}: {entry!r} is not KEY:SITE")
        mapping[key.strip()] = check_site_name(site.strip())
    return mapping


def site_for(mapping: dict[str, str], key: str | None) -> str:
    """The site `key` (an API client, a calling AE title) belongs to; `default` when unlisted."""
    return mapping.get(key or "", DEFAULT_SITE)
