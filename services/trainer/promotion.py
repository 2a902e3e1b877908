"""Operator actions on the registry that end in the serving folder: promote, roll back, publish.

Each moves the `champion` alias (or reads it) and then republishes, so the model server follows
the registry: "registry changes drive deployment, rollback is one step".
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

from services.trainer.publish import PublishedVersion, has_version, publish_version, serving_storage
from services.trainer.registry import ModelRegistry, RegistryError
from shared.operating_point import OperatingPoint, check_site_name

log = logging.getLogger(__name__)


def registry_for(settings) -> ModelRegistry:
    """The registry of `settings.registered_model_name` on `settings.mlflow_tracking_uri`."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return ModelRegistry(settings.registered_model_name)


def publish_registered(registry: ModelRegistry, settings, version: int | None = None,
                       saved_model_dir: str | Path | None = None) -> PublishedVersion:
    """Publish `version` (default: the champion) from the registry to `CXR_MODEL_BASE_PATH`.

    The champion before it stays loaded too when `serving_keep_previous` is set, so that a
    rollback only rewrites the config. `saved_model_dir` skips the download when the caller
    already holds the folder.
    """
    version = version if version is not None else registry.champion()
    if version is None:
        raise RegistryError(f"{registry.name} has no champion to publish")
    storage = serving_storage(settings.model_base_path, settings.s3_endpoint_url,
                              settings.s3_region)
    keep = []
    if settings.serving_keep_previous:
        earlier = [v for v in registry.champion_history() if v != version]
        keep = earlier[-1:]
    with tempfile.TemporaryDirectory(prefix="cxr-publish-") as scratch:
        source = saved_model_dir
        if source is None and not has_version(storage, settings.model_name, version):
            source = registry.download_saved_model(version, scratch)
        published = publish_version(source or scratch, version, storage=storage,
                                    model_name=settings.model_name, keep_versions=keep,
                                    wait_until_loaded=_load_waiter(settings),
                                    site_points=site_points(registry.version(version).tags))
    registry.tag_version(version, {"published_to": published.model_base_path})
    return published


SITE_TAG_PREFIX, SITE_TAG_SUFFIX = "site.", ".operating_point"


def site_tag(site: str) -> str:
    """The registry version tag that holds a site's operating point (JSON)."""
    return f"{SITE_TAG_PREFIX}{check_site_name(site)}{SITE_TAG_SUFFIX}"


def site_points(tags: Mapping[str, str]) -> dict[str, OperatingPoint]:
    """The site operating points a registry version carries (tags `site.<site>.operating_point`)."""
    points = {}
    for key, value in tags.items():
        if key.startswith(SITE_TAG_PREFIX) and key.endswith(SITE_TAG_SUFFIX):
            site = key[len(SITE_TAG_PREFIX):-len(SITE_TAG_SUFFIX)]
            points[site] = OperatingPoint.from_json(value)
    return points


def _load_waiter(settings):
    """Waits for the model server to load a new version (`CXR_PUBLISH_WAIT_FOR_LOAD_S`, 0: off)."""
    if settings.publish_wait_for_load_s <= 0:
        return None
    from services.trainer.serving_status import VersionLoadWaiter

    return VersionLoadWaiter(settings.model_server_grpc, settings.model_name,
                             settings.publish_wait_for_load_s).wait


def promote(settings, version: int, *, reason: str, force: bool = False,
            by: str | None = None) -> PublishedVersion:
    """Make `version` the champion and publish it; without `force` it must have passed the gate."""
    registry = registry_for(settings)
    tags = registry.version(version).tags
    if not force and tags.get("gate.passed") != "true":
        raise RegistryError(
            f"version {version} did not pass the promotion gate "
            f"({tags.get('gate.reason', 'never gated')}); use --force with --reason to override")
    if force and not reason.strip():
        raise RegistryError("a forced promotion needs a --reason")
    registry.promote(version, reason=reason or tags.get("gate.reason", "gate passed"),
                     forced=force, by=by)
    return publish_registered(registry, settings, version)


def rollback(settings, *, reason: str, by: str | None = None) -> PublishedVersion:
    """Move `champion` back to the previous champion and republish."""
    registry = registry_for(settings)
    rolled_from, rolled_to = registry.rollback(reason=reason, by=by)
    log.info("rolled back %s from version %d to %d", registry.name, rolled_from, rolled_to)
    return publish_registered(registry, settings, rolled_to)
