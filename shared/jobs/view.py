"""A job as its client sees it: the JSON of `GET /v1/predictions/{job_id}`, also the body of the
job's webhook (services/worker/webhook.py), so the two never differ."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.jobs.records import JobRecord, JobStatus
from shared.schemas import Failure, Feedback, PredictionResult


class JobLinks(BaseModel):
    self: str
    heatmap: str
    feedback: str
    fhir: str = Field(description="The finished job as a FHIR DiagnosticReport.")


class JobView(BaseModel):
    """A job's state; `result` once it succeeded, `failure` (code and reason) once it failed."""

    job_id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    filename: str | None = None
    size_bytes: int
    site: str = Field(description="The site whose operating point answers the job.")
    result: PredictionResult | None = None
    failure: Failure | None = None
    heatmap_url: str | None = Field(default=None, description="Set once the heatmap is ready.")
    feedback: Feedback | None = Field(default=None, description=(
        "The reader's current verdict on the result (`POST .../feedback`); a later one "
        "replaces it."))
    links: JobLinks

    @classmethod
    def from_record(cls, record: JobRecord) -> JobView:
        links = job_links(record.job_id)
        heatmap_ready = record.status == JobStatus.SUCCEEDED and record.heatmap_key is not None
        return cls(job_id=record.job_id, status=record.status, created_at=record.created_at,
                   started_at=record.started_at, finished_at=record.finished_at,
                   filename=record.filename, size_bytes=record.size_bytes, site=record.site,
                   result=record.result,
                   failure=record.failure, heatmap_url=links.heatmap if heatmap_ready else None,
                   feedback=record.feedback, links=links)


def job_links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/v1/predictions/{job_id}", heatmap=f"/v1/predictions/{job_id}/heatmap",
                    feedback=f"/v1/predictions/{job_id}/feedback",
                    fhir=f"/v1/predictions/{job_id}/fhir")
