"""First start: register and publish the bundled default model when the registry has no champion.

`models/<model_name>/<v>/` in the repository holds a trained SavedModel (made by
`export_for_serving`), so a fresh stack serves something before any retraining has run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow

from services.trainer.artifact.pyfunc_model import log_saved_model
from services.trainer.registry.promotion import audit_model_event, publish_registered, registry_for
from services.trainer.registry.publish import SAVED_MODEL_FILE
from services.trainer.registry.tracking import git_commit
from shared.contract import ASSETS_EXTRA, MODEL_INFO_FILE

log = logging.getLogger(__name__)

MODEL_INFO = Path(ASSETS_EXTRA) / MODEL_INFO_FILE


class BootstrapError(RuntimeError):
    """No bundled model to start from."""


def bundled_model(models_dir: str | Path, model_name: str) -> tuple[int, Path]:
    """The highest numbered SavedModel version under `<models_dir>/<model_name>/`."""
    root = Path(models_dir) / model_name
    versions = sorted(
        (int(p.name), p) for p in root.glob("*")
        if p.name.isdigit() and (p / SAVED_MODEL_FILE).is_file()
    ) if root.is_dir() else []
    if not versions:
        raise BootstrapError(f"no bundled SavedModel under {root}/<version>/{SAVED_MODEL_FILE}")
    return versions[-1]


def bootstrap(settings) -> dict:
    """Register + promote + publish the bundled model if there is no champion; else republish."""
    registry = registry_for(settings)
    champion = registry.champion()
    if champion is not None:
        published = publish_registered(registry, settings, champion)
        log.info("registry already has champion version %d; republished it", champion)
        return {"action": "republished", "version": champion,
                "model_base_path": published.model_base_path}
    bundled_version, folder = bundled_model(settings.bundled_models_dir, settings.model_name)
    info_file = folder / MODEL_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    mlflow.set_experiment(settings.mlflow_experiment)
    with mlflow.start_run(run_name="bundled-model", tags={
            "model_family": "bundled", "git_commit": git_commit()}) as run:
        mlflow.log_params({"bundled_version": bundled_version, "bundled_path": str(folder),
                           **{f"model_info.{k}": str(v)[:500] for k, v in info.items()}})
        model_uri = log_saved_model(folder)
    version = registry.register(model_uri, run.info.run_id, tags={
        "source": "bundled", "threshold": str(info.get("threshold", "unknown"))})
    registry.tag_version(version, {"gate.passed": "skipped",
                                   "gate.reason": "bundled default model, first start"})
    reason = "bootstrap: bundled default model"
    registry.promote(version, reason=reason, by="bootstrap")
    published = publish_registered(registry, settings, version, saved_model_dir=folder)
    audit_model_event(settings, "model_promote", "bootstrap", version=version,
                      previous_champion=None, reason=reason,
                      published_to=published.model_base_path)
    return {"action": "registered", "version": version, "bundled_version": bundled_version,
            "model_base_path": published.model_base_path}
