"""Response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.model_info import RegistryInfo
from shared.schemas import Failure, Feedback, JobRecord, JobStatus, PredictionResult


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


class JobList(BaseModel):
    """One page of the calling client's jobs, newest first."""

    items: list[JobView]
    next_cursor: str | None = Field(description=(
        "Pass as `cursor` for the next (older) page; null on the last page."))


def job_links(job_id: str) -> JobLinks:
    return JobLinks(self=f"/v1/predictions/{job_id}", heatmap=f"/v1/predictions/{job_id}/heatmap",
                    feedback=f"/v1/predictions/{job_id}/feedback",
                    fhir=f"/v1/predictions/{job_id}/fhir")


class CurrentModel(BaseModel):
    """The model that answers new predictions; null fields and a note when a source is down."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int | None = Field(description="The newest AVAILABLE version on the model server.")
    threshold: float | None = Field(description="Decision threshold carried by that version.")
    available_versions: list[int] = Field(default_factory=list)
    registry: RegistryInfo | None = Field(
        default=None, description="MLflow registry entry behind alias `champion`.")
    notes: list[str] = Field(default_factory=list)


class Liveness(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
