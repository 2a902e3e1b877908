"""The app in-process (httpx ASGI transport): real bugs and a dead Redis still answer problems."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
from fastapi import HTTPException

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.support.procs import free_port


def _settings(tmp_path, redis_url: str, **overrides) -> GatewaySettings:
    return GatewaySettings(env="test", api_keys="alice:k-1", redis_url=redis_url,
                           storage_root=str(tmp_path / "storage"),
                           audit_log=str(tmp_path / "audit.log"),
                           model_server_rest=f"http://127.0.0.1:{free_port()}",
                           mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", **overrides)


def _get(app, path: str, **kwargs) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get(path, **kwargs)

    return asyncio.run(call())


def test_an_unexpected_bug_is_logged_and_answered_as_a_500_problem(tmp_path, redis_url, caplog):
    app = create_app(_settings(tmp_path, redis_url))

    @app.get("/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a real bug")

    with caplog.at_level(logging.ERROR, logger="cxr.gateway"):
        response = _get(app, "/v1/broken", headers={"Authorization": "Bearer k-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "internal_error" and "a real bug" not in body["detail"]
    assert any(r.exc_info and "a real bug" in str(r.exc_info[1]) for r in caplog.records)


def test_redis_down_gives_503_problems_not_crashes(tmp_path):
    app = create_app(_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    response = _get(app, "/v1/predictions/abc", headers={"Authorization": "Bearer k-1"})
    assert response.status_code == 503
    assert response.json()["code"] == "backend_unavailable"
    assert response.headers["retry-after"]
    ready = _get(app, "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("failed")


def test_reads_are_audited_with_client_action_job_and_status(tmp_path, redis_url):
    app = create_app(_settings(tmp_path, redis_url))
    response = _get(app, "/v1/predictions/job-1", headers={"Authorization": "Bearer k-1"})
    assert response.status_code == 404
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    entry = next(e for e in lines if e["job_id"] == "job-1")
    assert entry["client"] == "alice" and entry["action"] == "read_result"
    assert entry["status"] == 404 and entry["code"] == "job_not_found" and entry["time"]


def test_a_forbidden_answer_from_any_route_is_an_audited_refusal(tmp_path, redis_url):
    app = create_app(_settings(tmp_path, redis_url))

    @app.get("/v1/forbidden")
    async def forbidden() -> None:
        raise HTTPException(status_code=403, detail="not for this client")

    response = _get(app, "/v1/forbidden", headers={"Authorization": "Bearer k-1"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    (refused,) = [e for e in lines if e["action"] == "refused"]
    assert (refused["client"], refused["status"], refused["code"], refused["path"]) == (
        "alice", 403, "forbidden", "/v1/forbidden")
    assert "k-1" not in (tmp_path / "audit.log").read_text()
