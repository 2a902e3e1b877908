"""`GET /v1/models/current` reads the champion's metrics and model card from real MLflow."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from mlflow.tracking import MlflowClient

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
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


def _settings(mlflow_server, redis_url: str, tmp_path, name: str, **extra) -> GatewaySettings:
    """A gateway's settings reading `name` from the test MLflow, its model server down."""
    return GatewaySettings(env="test", api_keys="alice:k-1", redis_url=redis_url,
                           storage_root=str(tmp_path / "jobs"), model_name=name,
                           mlflow_tracking_uri=mlflow_server.tracking_uri,
                           model_server_rest=f"http://127.0.0.1:{free_port()}", **extra)


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
    settings = _settings(mlflow_server, redis_url, tmp_path, name)
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
    settings = _settings(mlflow_server, redis_url, tmp_path,
                         f"cxr-unregistered-{uuid.uuid4().hex[:8]}")
    body = _current_model(settings)
    assert body["registry"] is None
    assert any("champion" in note for note in body["notes"])


def _register_bare_champion(tracking_uri: str, name: str, description: str = "") -> str:
    """A champion whose run holds no metrics and no card, as `bootstrap` registers the bundled
    model."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"gateway-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "bundled_version", "3")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                          run_id=run.info.run_id, description=description)
    client.set_registered_model_alias(name, "champion", version.version)
    return version.version


def test_a_bundled_champion_shows_its_own_folders_metrics_and_card(mlflow_server, redis_url,
                                                                    tmp_path):
    import json
    import shutil

    from tests.support.procs import REPO_ROOT

    name = f"cxr-bundled-{uuid.uuid4().hex[:8]}"
    version = _register_bare_champion(mlflow_server.tracking_uri, name)
    # What publishing the bundled version into the serving base puts there.
    bundled = REPO_ROOT / "models" / "cxr-pneumonia" / "5" / "assets.extra"
    extra = tmp_path / "serving" / name / version / "assets.extra"
    extra.mkdir(parents=True)
    for file in ("metrics.json", "model_card.md"):
        shutil.copyfile(bundled / file, extra / file)
    settings = _settings(mlflow_server, redis_url, tmp_path, name,
                         model_base_path=str(tmp_path / "serving"))
    registry = _current_model(settings)["registry"]
    expected = json.loads((bundled / "metrics.json").read_text())["metrics"]
    assert registry["model_version"] == version
    assert registry["metrics"] == pytest.approx(expected)
    assert {"gate.auroc", "site_acceptance.auroc"} <= set(registry["metrics"])
    assert registry["model_card"] == (REPO_ROOT / "models" / "MODEL_CARD.md").read_text()
    assert registry["from_version_files"] == ["metrics", "model_card"]


def test_the_registrys_own_card_wins_and_a_folder_without_files_is_no_error(
        mlflow_server, redis_url, tmp_path):
    name = f"cxr-bare-{uuid.uuid4().hex[:8]}"
    _register_bare_champion(mlflow_server.tracking_uri, name, description=CARD)
    settings = _settings(mlflow_server, redis_url, tmp_path, name,
                         model_base_path=str(tmp_path / "empty-serving"))
    registry = _current_model(settings)["registry"]
    assert registry["model_card"] == CARD and registry["metrics"] == {}
    assert registry["from_version_files"] == []
