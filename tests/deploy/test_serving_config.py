"""TF Serving: one command line and one model config for compose and k8s, accepted by the local
stand-in (`python -m services.model_server`) and in the format the trainer's publish writes."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from services.trainer.registry.publish import render_models_config
from tests.deploy.loaders import find, load_compose
from tests.deploy.serving_command import (
    from_compose,
    from_kubernetes,
    monitoring_config_class,
)
from tests.support.model_server import start_model_server
from tests.support.procs import REPO_ROOT

SERVING_DIR = REPO_ROOT / "infra" / "serving"
MODELS_CONFIG = SERVING_DIR / "models.config"
MONITORING_CONFIG = SERVING_DIR / "monitoring.config"
SERVING_MOUNT = "/models"
MODEL_NAME = "cxr-pneumonia"


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_models_config_parses_and_labels_a_served_version():
    config = parse_models_config(MODELS_CONFIG.read_text())
    (model,) = config.model_config_list.config
    assert model.name == MODEL_NAME
    assert model.base_path == f"{SERVING_MOUNT}/{MODEL_NAME}"
    assert model.model_platform == "tensorflow"
    assert model.version_labels["stable"] in model.model_version_policy.specific.versions


def test_models_config_is_what_publishing_version_1_writes():
    """The seed equals the trainer's own rendering for the bundled model's first version."""
    published = render_models_config(MODEL_NAME, f"{SERVING_MOUNT}/{MODEL_NAME}", [1], stable=1)
    assert parse_models_config(MODELS_CONFIG.read_text()) == parse_models_config(published)


def test_monitoring_config_parses_and_prometheus_scrapes_its_path():
    config = text_format.Parse(MONITORING_CONFIG.read_text(), monitoring_config_class()())
    assert config.prometheus_config.enable
    prometheus = yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "tf-serving")
    assert job["metrics_path"] == config.prometheus_config.path


def test_compose_and_kubernetes_run_the_same_command(rendered):
    compose_command = from_compose(load_compose())
    for objects in rendered.values():
        assert from_kubernetes(objects) == compose_command
    assert compose_command.flag("model_config_file") == f"{SERVING_MOUNT}/models.config"


def test_compose_seeds_and_mounts_the_same_files():
    services = load_compose()["services"]
    command = from_compose(load_compose())
    seed = services["serving-init"]
    assert seed["image"] == command.image
    assert "./infra/serving/models.config:/etc/tfserving/models.config:ro" in seed["volumes"]
    assert f"cp /etc/tfserving/models.config {command.flag('model_config_file')}" in \
        " ".join(seed["command"])
    serving_volumes = services["tf-serving"]["volumes"]
    assert f"./infra/serving/monitoring.config:{command.flag('monitoring_config_file')}:ro" in \
        serving_volumes
    assert f"serving-models:{SERVING_MOUNT}:ro" in serving_volumes
    assert f"serving-models:{SERVING_MOUNT}" in services["trainer-worker"]["volumes"]
    assert services["trainer-worker"]["environment"]["CXR_MODEL_BASE_PATH"] == SERVING_MOUNT


def test_kubernetes_seeds_and_mounts_the_same_files(overlay_objects):
    pod = find(overlay_objects, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    config_map = find(overlay_objects, "ConfigMap", config_volume["configMap"]["name"])
    assert config_map["data"]["models.config"] == MODELS_CONFIG.read_text()
    assert config_map["data"]["monitoring.config"] == MONITORING_CONFIG.read_text()
    command = from_kubernetes(overlay_objects)
    (seed,) = pod["initContainers"]
    assert seed["image"] == command.image
    assert f"cp /etc/tfserving/models.config {command.flag('model_config_file')}" in \
        " ".join(seed["args"])
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["serving-models"] == SERVING_MOUNT
    assert command.flag("monitoring_config_file").startswith(mounts["config"] + "/")
    settings = find(overlay_objects, "ConfigMap", next(
        o["metadata"]["name"] for o in overlay_objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cxr-settings")))
    assert settings["data"]["CXR_MODEL_BASE_PATH"] == SERVING_MOUNT


@pytest.mark.parametrize("flag", from_compose(load_compose()).flags)
def test_local_model_server_accepts_the_flag(flag):
    from services.model_server.__main__ import parse_flags

    parse_flags([flag, "--model_config_file=models.config"])


@pytest.mark.slow
def test_local_model_server_serves_the_seed_config_with_these_flags(tmp_path):
    """The stand-in, started with the deployed flags (paths moved to tmp and the repo), serves
    version 1 as `stable` from the seed config and its metrics at the monitoring config's path;
    compose's health check passes against it, and fails once it stopped."""
    command = from_compose(load_compose())
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    seed = MODELS_CONFIG.read_text().replace(f'"{SERVING_MOUNT}/', f'"{models_dir}/')
    config_file = models_dir / "models.config"
    config_file.write_text(seed)
    kept = [f for f in command.flags
            if f.split("=")[0] not in {"--port", "--rest_api_port", "--model_config_file",
                                       "--monitoring_config_file"}]
    kept.append(f"--monitoring_config_file={MONITORING_CONFIG}")
    server = start_model_server(tmp_path, config_file=config_file, extra_args=kept)
    try:
        with urllib.request.urlopen(f"{server.rest_url}/v1/models/{MODEL_NAME}/labels/stable",
                                    timeout=10) as response:
            assert b"AVAILABLE" in response.read()
        metrics_path = text_format.Parse(MONITORING_CONFIG.read_text(),
                                         monitoring_config_class()()).prometheus_config.path
        with urllib.request.urlopen(f"{server.rest_url}{metrics_path}", timeout=10) as response:
            assert response.status == 200
        assert run_health_check(server.rest_port) == 0
    finally:
        server.stop()
    assert run_health_check(server.rest_port) != 0


def run_health_check(rest_port: int) -> int:
    """compose's TF Serving health check (bash, no curl in the image) against this REST port."""
    kind, *argv = load_compose()["services"]["tf-serving"]["healthcheck"]["test"]
    assert kind == "CMD"
    argv = [a.replace("/127.0.0.1/8501", f"/127.0.0.1/{rest_port}") for a in argv]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode
