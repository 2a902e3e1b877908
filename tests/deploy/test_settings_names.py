"""Every CXR_* variable the deployment sets is a field of the settings class of the service it
reaches: a misspelt or stale name would be silently ignored by pydantic-settings."""

from __future__ import annotations

import re

import pytest
from pydantic_settings import BaseSettings

from services.gateway.settings import GatewaySettings
from services.pacs.settings import PacsSettings
from services.trainer.settings import TrainerSettings
from services.worker.settings import WorkerSettings
from tests.deploy.loaders import (
    COMPOSE_FILE,
    IMAGE_TARGETS,
    containers,
    image_target,
    load_compose,
    pod_specs,
)

SETTINGS_BY_IMAGE = {"gateway": GatewaySettings, "worker": WorkerSettings,
                     "trainer": TrainerSettings, "pacs": PacsSettings}
CXR_NAME = re.compile(r"\bCXR_[A-Z0-9_]+\b")


def variable_names(settings: type[BaseSettings]) -> set[str]:
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.add((alias if isinstance(alias, str) else prefix + field_name).upper())
    return names


def settings_for_image(image: str) -> type[BaseSettings] | None:
    repository = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return SETTINGS_BY_IMAGE.get(repository)


def any_service_reads() -> set[str]:
    return set().union(*(variable_names(cls) for cls in SETTINGS_BY_IMAGE.values()))


@pytest.mark.parametrize("image", sorted(SETTINGS_BY_IMAGE))
def test_every_service_reads_the_shared_variables_from_the_environment(monkeypatch, image):
    """A shared name the deployment sets once reaches every service that gets it."""
    monkeypatch.setenv("CXR_REDIS_URL", "redis://redis.example:6380/3")
    monkeypatch.setenv("CXR_STORAGE_ROOT", "/srv/cxr-storage")
    monkeypatch.setenv("CXR_MAX_UPLOAD_BYTES", "1234")
    settings = SETTINGS_BY_IMAGE[image]()
    assert (settings.redis_url, settings.storage_root, settings.max_upload_bytes) == (
        "redis://redis.example:6380/3", "/srv/cxr-storage", 1234)


@pytest.mark.parametrize("service_name", sorted(load_compose()["services"]))
def test_compose_sets_only_names_its_service_reads(service_name):
    service = load_compose()["services"][service_name]
    names = {n for n in service.get("environment", {}) if n.startswith("CXR_")}
    settings = settings_for_image(service.get("image", ""))
    if settings is None:
        assert not names, f"{service_name} is no cxr service but gets {names}"
        return
    assert names <= variable_names(settings), names - variable_names(settings)


def test_compose_interpolates_only_known_names():
    used = set(CXR_NAME.findall(COMPOSE_FILE.read_text()))
    assert used <= any_service_reads(), used - any_service_reads()


def test_kubernetes_sets_only_names_the_service_reads(overlay_objects):
    readable = any_service_reads()
    for obj in overlay_objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("cxr-settings"):
            assert set(obj["data"]) <= readable, set(obj["data"]) - readable
    for owner, pod in pod_specs(overlay_objects):
        for container in containers(pod):
            names = {e["name"] for e in container.get("env", []) if e["name"].startswith("CXR_")}
            settings = settings_for_image(container["image"])
            allowed = variable_names(settings) if settings else set()
            assert names <= allowed, f"{owner['metadata']['name']}: {names - allowed}"


@pytest.mark.parametrize("service", IMAGE_TARGETS)
def test_image_targets_set_only_names_their_service_reads(service):
    names = set(CXR_NAME.findall(" ".join(image_target(service).args("ENV"))))
    assert names <= variable_names(SETTINGS_BY_IMAGE[service])
