"""`GET /v1/models/current`: serving version and threshold, registry metrics if reachable."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from services.gateway.api_models import CurrentModel
from services.gateway.clients import UPSTREAM_ERRORS
from services.gateway.clients.mlflow_registry import RegistryInfo
from services.gateway.deps import ClientDep, ResourcesDep
from services.gateway.problems import problem_responses

router = APIRouter(prefix="/v1/models", tags=["models"])
log = logging.getLogger("cxr.gateway")


@router.get("/current", response_model=CurrentModel, summary="The model answering predictions",
            responses=problem_responses(401, 429))
async def current_model(response: Response, resources: ResourcesDep,
                        client: ClientDep) -> CurrentModel:
    """Asks the model server and the MLflow registry; a source that is down leaves a note."""
    settings = resources.settings
    model = CurrentModel(name=settings.model_name, version=None, threshold=None)
    try:
        status = await resources.serving.status()
        model.available_versions = status.available_versions
        model.version = status.serving_version
        if model.version is None:
            model.notes.append("The model server has no AVAILABLE version of this model yet.")
        else:
            model.threshold = await resources.serving.threshold(model.version,
                                                                settings.image_size)
    except UPSTREAM_ERRORS as exc:
        log.warning("model server REST API at %s: %r", settings.model_server_rest, exc)
        model.notes.append(f"The model server is unreachable or answered unexpectedly ({exc!r}).")
    model.registry = await _registry_entry(resources, model)
    response.headers["Cache-Control"] = "no-store"
    return model


async def _registry_entry(resources: ResourcesDep, model: CurrentModel) -> RegistryInfo | None:
    try:
        entry = await resources.registry.champion()
    except UPSTREAM_ERRORS as exc:
        log.info("MLflow at %s: %r", resources.settings.mlflow_tracking_uri, exc)
        model.notes.append("The MLflow registry is unreachable; evaluation metrics are not shown.")
        return None
    if entry is None:
        model.notes.append("The MLflow registry has no version with alias 'champion'.")
    elif model.version is not None and entry.model_version != str(model.version):
        model.notes.append(f"The registry's champion is version {entry.model_version}; the model "
                           f"server answers with version {model.version}.")
    return entry
