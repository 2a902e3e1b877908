"""Operator actions on the registry that end in the serving folder: promote, roll back, publish.

Each moves the `champion` alias (or reads it) and then republishes, so the model server follows
the registry: "registry changes drive deployment, rollback is one step". Each move of the
champion is also a line of the audit trail (`audit_model_event`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow

from services.trainer.registry.publish import (
    PublishedVersion,
    has_version,
    publish_shadow,
    publish_version,
    serving_storage,
)
from services.trainer.registry.registry import ModelRegistry, RegistryError, current_user
from shared.audit import AuditEntry, ensure_audit
from shared.operating_point import OperatingPoint, check_site_name

log = logging.getLogger(__name__)


def registry_for(settings) -> ModelRegistry:
    """The registry of `settings.registered_model_name` on `settings.mlflow_tracking_uri`."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return ModelRegistry(settings.registered_model_name)


def audit_model_event(settings, action: str, by: str, *, status: int = 200,
                      **extra: object) -> None:
    """One audit line for a registry decision (`model_promote`, `model_approve`, ...): the
    client is who decided, `model` the registered model; no job id."""
    ensure_audit(settings.audit_log)
    AuditEntry(by, action, status=status,
               extra={"model": settings.registered_model_name, **extra}).emit()


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


def publish_shadow_registered(settings, version: int, *, by: str | None = None) -> PublishedVersion:
    """Serve registered `version` under the `shadow` label beside the champion (audited)."""
    registry = registry_for(settings)
    tags = registry.version(version).tags
    champion = registry.champion()
    if champion is None:
        raise RegistryError(f"{registry.name} has no champion for a shadow version to run beside")
    if champion == version:
        raise RegistryError(f"version {version} is the champion already")
    storage = serving_storage(settings.model_base_path, settings.s3_endpoint_url,
                              settings.s3_region)
    with tempfile.TemporaryDirectory(prefix="cxr-shadow-") as scratch:
        source: str | Path = scratch
        if not has_version(storage, settings.model_name, version):
            source = registry.download_saved_model(version, scratch)
        try:
            published = publish_shadow(source, version, storage=storage,
                                       model_name=settings.model_name,
                                       wait_until_loaded=_load_waiter(settings),
                                       site_points=site_points(tags))
        except ValueError as err:
            raise RegistryError(str(err)) from err
    by = by or current_user()
    registry.tag_version(version, {"shadow_published_to": published.model_base_path})
    audit_model_event(settings, "model_shadow", by, version=version, champion=champion,
                      published_to=published.model_base_path)
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
    from services.trainer.registry.version_wait import VersionLoadWaiter

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
    by = by or current_user()
    reason = reason or tags.get("gate.reason", "gate passed")
    previous = registry.champion()
    registry.promote(version, reason=reason, forced=force, by=by)
    published = publish_registered(registry, settings, version)
    audit_model_event(settings, "model_promote", by, version=version, previous_champion=previous,
                      reason=reason, forced=force, published_to=published.model_base_path)
    return published


def rollback(settings, *, reason: str, by: str | None = None) -> PublishedVersion:
    """Move `champion` back to the previous champion and republish."""
    registry = registry_for(settings)
    by = by or current_user()
    rolled_from, rolled_to = registry.rollback(reason=reason, by=by)
    log.info("rolled back %s from version %d to %d", registry.name, rolled_from, rolled_to)
    published = publish_registered(registry, settings, rolled_to)
    audit_model_event(settings, "model_rollback", by, version=rolled_to,
                      previous_champion=rolled_from, reason=reason,
                      published_to=published.model_base_path)
    return published
