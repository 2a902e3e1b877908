"""Response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.clients.mlflow_registry import RegistryInfo
from shared.jobs.view import JobView


class JobList(BaseModel):
    """One page of the calling client's jobs, newest first."""

    items: list[JobView]
    next_cursor: str | None = Field(description=(
        "Pass as `cursor` for the next (older) page; null on the last page."))


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
