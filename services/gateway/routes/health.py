"""Probes (`/healthz`, `/readyz`); Prometheus metrics are on the internal metrics port only
(`services.gateway.metrics_server`)."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.gateway.api_models import Liveness, Readiness
from services.gateway.clients import UPSTREAM_ERRORS
from services.gateway.deps import ResourcesDep
from services.gateway.errors import NotReadyError
from services.gateway.problems import RETRY_AFTER_S, problem_response, problem_responses
from services.gateway.resources import GatewayResources

log = logging.getLogger("cxr.gateway")
router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Liveness, summary="The process is up")
async def healthz() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, summary="Dependencies are reachable",
            responses=problem_responses(503))
async def readyz(request: Request, resources: ResourcesDep) -> Readiness | JSONResponse:
    """Redis answers, storage round-trips an object, the model server has a version AVAILABLE."""
    checks = {
        "redis": await _check("redis", _redis_ok(resources)),
        "storage": await _check("storage", run_in_threadpool(_storage_round_trip, resources)),
        "model_server": await _check("model_server", _model_server_ok(resources)),
    }
    failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
    if failed:
        error = NotReadyError(f"Not ready: {', '.join(failed)} failed.")
        return problem_response(request, error.http_status, error.code, error.message,
                                {"Retry-After": RETRY_AFTER_S}, checks=checks)
    return Readiness(status="ok", checks=checks)


async def _check(name: str, probe) -> str:
    """"ok" or "failed"; why goes to the log only (paths, addresses and exception names are the
    operator's, not every caller's)."""
    try:
        outcome = await probe
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
        return "failed"
    if outcome is True:
        return "ok"
    log.warning("readiness check %s failed: %s", name, outcome)
    return "failed"


async def _redis_ok(resources: GatewayResources) -> bool:
    return bool(await resources.redis.ping())


def _storage_round_trip(resources: GatewayResources) -> bool | str:
    key = f"health/readyz-{uuid.uuid4().hex}"
    payload = b"readyz"
    resources.storage.put(key, payload)
    try:
        return True if resources.storage.get(key) == payload else "read back different bytes"
    finally:
        resources.storage.delete(key)


async def _model_server_ok(resources: GatewayResources) -> bool | str:
    try:
        status = await resources.serving.status()
    except UPSTREAM_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return True if status.serving_version is not None else "no AVAILABLE model version"
