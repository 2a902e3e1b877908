"""`GET /v1/models/current` reads the champion's metrics and model card from real MLflow."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from mlflow.tracking import MlflowClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from tests.support.procs import free_port

CARD = "# Model card\nA test model; not for clinical use.\n"


def _register_champion(tracking_uri: str, name: str) -> tuple[str, str]:
    """A run with metrics and a model card, registered twice; version 1 becomes champion."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"gateway-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "auroc", 0.97)
    client.log_metric(run.info.run_id, "sensitivity", 0.96)
    client.log_text(run.info.run_id, CARD, "model_card.md")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    first = client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                        run_id=run.info.run_id)
    client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_model_version_tag(name, first.version, "gate.passed", "true")
    client.set_registered_model_alias(name, "champion", first.version)
    return run.info.run_id, first.version


def _current_model(settings: GatewaySettings) -> dict:
    async def call() -> httpx.Response:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/v1/models/current",
                                    headers={"Authorization": "Bearer k-1"})

    response = asyncio.run(call())
    assert response.status_code == 200, response.text
    return response.json()


def test_current_model_shows_the_champions_metrics_and_model_card(mlflow_server, redis_url,
                                                                   tmp_path):
    name = f"cxr-gateway-{uuid.uuid4().hex[:8]}"
    run_id, version = _register_champion(mlflow_server.tracking_uri, name)
    settings = GatewaySettings(env="test", api_keys="alice:k-1", redis_url=redis_url,
                               storage_root=str(tmp_path), model_name=name,
                               mlflow_tracking_uri=mlflow_server.tracking_uri,
                               model_server_rest=f"http://127.0.0.1:{free_port()}")
    body = _current_model(settings)
    registry = body["registry"]
    assert registry["model_version"] == version and registry["alias"] == "champion"
    assert registry["run_id"] == run_id
    assert registry["metrics"] == {"auroc": 0.97, "sensitivity": 0.96}
    assert registry["tags"]["gate.passed"] == "true"
    assert registry["model_card"] == CARD
    # The model server is down in this test: its fields are null and a note says so.
    assert body["version"] is None and body["threshold"] is None
    assert any("model server" in note for note in body["notes"])


def test_a_registry_without_champion_is_a_note(mlflow_server, redis_url, tmp_path):
    settings = GatewaySettings(env="test", api_keys="alice:k-1", redis_url=redis_url,
                               storage_root=str(tmp_path),
                               model_name=f"cxr-unregistered-{uuid.uuid4().hex[:8]}",
                               mlflow_tracking_uri=mlflow_server.tracking_uri,
                               model_server_rest=f"http://127.0.0.1:{free_port()}")
    body = _current_model(settings)
    assert body["registry"] is None
    assert any("champion" in note for note in body["notes"])
