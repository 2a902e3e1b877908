"""docker-compose.yml: valid Compose Specification, health-gated start order, pinned images."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from tests.deploy.loaders import (
    COMPOSE_FILE,
    DOCKERFILE,
    IMAGE_TARGETS,
    dockerfile_stages,
    load_compose,
)
from tests.deploy.serving_command import from_compose
from tests.support.procs import REPO_ROOT

SCHEMA_FILE = REPO_ROOT / "tests" / "deploy" / "schemas" / "compose-spec.json"
ONE_SHOT = {"minio-init", "bootstrap", "serving-init"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEYS|ACCESS_KEY|TLS_KEY")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_follows_the_compose_specification(compose):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(compose)]
    assert errors == []


def test_the_schema_catches_a_misspelt_key(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "5s"
    assert not validator().is_valid(broken)


def test_long_running_services_have_health_checks(compose):
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            test = service.get("healthcheck", {}).get("test")
            assert test and not service["healthcheck"].get("disable"), name


def test_start_order_waits_for_health_or_completion(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = ("service_completed_successfully" if dependency in ONE_SHOT
                        else "service_healthy")
            assert condition["condition"] == expected, f"{name} -> {dependency}"


def test_exactly_one_beat(compose):
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_images_are_built_here_or_pinned(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            dockerfile = REPO_ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
            assert dockerfile == DOCKERFILE, name
            # Without a target, a build would make the Dockerfile's last stage, whatever it is.
            assert build.get("target") in IMAGE_TARGETS, f"{name}: target {build.get('target')}"
            continue
        image_name, _, tag = service["image"].rpartition(":")
        pinned = image_name and re.search(r"\d", tag) and tag != "latest"
        assert pinned, f"{name}: {service['image']}"


def test_compose_builds_every_image_target(compose):
    built = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert built == set(IMAGE_TARGETS)
    assert set(IMAGE_TARGETS) <= {stage.name for stage in dockerfile_stages()}


def test_secrets_have_no_defaults():
    """Every secret comes from the operator: `${NAME:?message}`, never a default value."""
    for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        name, operator = match.group(1), match.group(2)
        if SECRET_NAME.search(name):
            assert operator == ":?", f"${{{name}}} must be required with :?"


def test_tls_material_comes_from_secrets(compose):
    gateway = compose["services"]["gateway"]
    env = gateway["environment"]
    mounted = {f"/run/secrets/{name}" for name in gateway["secrets"]}
    assert {env["CXR_TLS_CERT"], env["CXR_TLS_KEY"]} <= mounted
    assert set(gateway["secrets"]) <= set(compose["secrets"])


def test_operator_consoles_listen_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if name not in ("gateway", "pacs"):  # the API and the DICOM port face the hospital
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_prometheus_scrapes_ports_the_services_listen_on(compose):
    prometheus = yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    services = compose["services"]
    listening = {
        "gateway": int(services["gateway"]["environment"]["CXR_GATEWAY_METRICS_PORT"]),
        "worker": int(services["worker"]["environment"]["CXR_WORKER_METRICS_PORT"]),
        "pacs": int(services["pacs"]["environment"]["CXR_PACS_METRICS_PORT"]),
        "pacs-sender": int(services["pacs-sender"]["environment"]["CXR_PACS_SENDER_METRICS_PORT"]),
        "tf-serving": int(from_compose(compose).flag("rest_api_port")),
    }
    scraped = {}
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                scraped[name] = dns["port"]
    assert {host: scraped.get(host) for host in listening} == listening
    gateway_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "gateway")
    # the internal metrics port is plain HTTP and not published; the public port has no metrics
    assert gateway_job.get("scheme", "http") == "http"
    gateway = services["gateway"]
    assert gateway["environment"]["CXR_GATEWAY_METRICS_HOST"] == "0.0.0.0"
    published = {str(port).rsplit(":", 1)[-1] for port in gateway.get("ports", [])}
    assert gateway["environment"]["CXR_GATEWAY_METRICS_PORT"] not in published
