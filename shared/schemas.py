"""Prediction results, failures and reader feedback as stored on job records and returned by the
API; the record itself is `shared.jobs.records.JobRecord`."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared import contract


def _require_utc(value: datetime | None) -> datetime | None:
    """Timestamps must carry a timezone; they are stored converted to UTC."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_require_utc)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ScopeReason(StrEnum):
    """Why a film lies outside the validated population (shared.contract, SCOPE_REASONS)."""

    NOT_CHEST_RADIOGRAPH = contract.NOT_CHEST_RADIOGRAPH
    BLANK_IMAGE = contract.BLANK_IMAGE
    NOISE_IMAGE = contract.NOISE_IMAGE
    COLOUR_IMAGE = contract.COLOUR_IMAGE
    LATERAL_VIEW = contract.LATERAL_VIEW
    ROTATED = contract.ROTATED
    INVERTED = contract.INVERTED
    ADULT = contract.ADULT
    ATYPICAL_IMAGE = contract.ATYPICAL_IMAGE


assert tuple(ScopeReason) == contract.SCOPE_REASONS, "ScopeReason must list SCOPE_REASONS"


class Scope(BaseModel):
    """Whether the film lies in the population the model was validated on, and why not."""

    in_validated_population: bool = Field(
        description="False when any reason below applies: read the answer with that in mind.")
    reasons: list[ScopeReason] = Field(
        default_factory=list,
        description="Why the film lies outside the validated population (empty when inside).")


class Failure(BaseModel):
    """Why a job failed: the `code` and `message` of the `CXRError` that stopped it.

    `reasons`: for `not_a_chest_radiograph`, the scope reasons that refused the film.
    """

    code: str
    message: str
    reasons: list[ScopeReason] | None = None


class ModelRef(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int


class ClassProbabilities(BaseModel):
    normal: Probability
    bacterial: Probability
    viral: Probability


class SiteOperatingPoint(BaseModel):
    """Which operating point answered: the job's site's own (`site`) or the model's (`model`)."""

    site: str
    threshold: Probability
    calibrated_by: Literal["site", "model"]
    fitted_at: UTCDateTime | None = None


class PredictionResult(BaseModel):
    label: Literal["NORMAL", "PNEUMONIA"]
    pneumonia_probability: Probability
    class_probabilities: ClassProbabilities
    subtype: Literal["bacterial", "viral"] | None = None
    threshold: Probability
    model: ModelRef
    timings_ms: dict[str, float] = Field(default_factory=dict)
    operating_point: SiteOperatingPoint | None = None
    # None only in results written before scope screening existed.
    scope: Scope | None = None


READER_MAX_CHARS = 100
COMMENT_MAX_CHARS = 2000
_NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # tabs and newlines only in comments


class ReaderFeedback(BaseModel):
    """A reader's verdict on a finished prediction (`POST /v1/predictions/{job_id}/feedback`).

    `comment` is free text and may hold anything a reader types: it is kept on the job record
    only, never logged and never copied into the site's training data.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    label: Literal["NORMAL", "PNEUMONIA"] = Field(description="The reader's reading of the film.")
    subtype: Literal["bacterial", "viral"] | None = Field(
        default=None, description="For PNEUMONIA, when the reader knows it; null for NORMAL.")
    reader: str = Field(min_length=1, max_length=READER_MAX_CHARS,
                        pattern=r"^[^\x00-\x1f\x7f]*$",
                        description="Who read the film (a staff name or code, not a patient's).")
    comment: str | None = Field(default=None, max_length=COMMENT_MAX_CHARS, pattern=_NO_CONTROL,
                                description="Free text for the record; never logged.")

    @model_validator(mode="after")
    def _subtype_only_for_pneumonia(self) -> ReaderFeedback:
        if self.label == "NORMAL" and self.subtype is not None:
            raise ValueError("a NORMAL film has no pneumonia subtype: send subtype null")
        return self


class Feedback(ReaderFeedback):
    """The current reader feedback on a job, as stored on its record and shown by the API."""

    model_config = ConfigDict(extra="ignore")

    confirmed_at: UTCDateTime = Field(description="When this feedback was given.")
    client_id: str = Field(description="The API client that sent it.")
    revision: int = Field(ge=1, description="1 for the first feedback, +1 for each replacement.")
    agrees: bool = Field(description="Whether the reader's label is the model's label.")
