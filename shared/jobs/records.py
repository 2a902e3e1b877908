"""A prediction job's record and status, as stored in Redis and storage (`shared.jobs.store`).

`JOB_ID_PATTERN` is the one rule for job ids, in records, API paths and storage keys alike: safe
inside Redis keys and storage keys.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.contract import DEFAULT_SITE
from shared.schemas import Failure, Feedback, PredictionResult, UTCDateTime, utc_now

JOB_ID_CHARS = "[A-Za-z0-9_.-]{1,128}"
JOB_ID_PATTERN = rf"^{JOB_ID_CHARS}$"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobRecord(BaseModel):
    """One prediction request from upload to result; the copy in storage is the durable one."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    client_id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: UTCDateTime = Field(default_factory=utc_now)
    started_at: UTCDateTime | None = None
    finished_at: UTCDateTime | None = None
    filename: str | None = None
    content_type: str | None = None
    size_bytes: int = Field(default=0, ge=0)
    upload_key: str
    source: Literal["api", "dicom"] = "api"
    # The site whose operating point answers the job (never a patient identifier).
    site: str = DEFAULT_SITE
    attempts: int = Field(default=0, ge=0)
    failure: Failure | None = None
    result: PredictionResult | None = None
    heatmap_key: str | None = None
    # The Grad-CAM map the overlay at `heatmap_key` is drawn from on first read (shared.heatmap).
    attention_key: str | None = None
    # The reader's current verdict on the result (a later one replaces it; the audit trail keeps
    # every one).
    feedback: Feedback | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
