"""MLflow run logging: parameters, per-epoch and final metrics, figures, model card and the model;
a site acceptance run; the data set manifest a run logged.

The CNN and the HOG baseline are logged as two runs of the same experiment, with the same metric
names (`val.auroc`, `val.sensitivity` ...), so they compare side by side in the MLflow UI; the
baseline run carries `paired_run_id` pointing at the CNN run.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from services.trainer.artifact.pyfunc_model import log_saved_model
from services.trainer.data.dataset import DatasetError
from services.trainer.data.manifest import MANIFEST_ARTIFACT, DatasetManifest
from services.trainer.evaluation.site_calibration import SiteAcceptance

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
VALIDATION_PREFIX = "val"
MAX_PARAM_CHARS = 6000  # MLflow refuses longer parameter values
SITE_EXPERIMENT = "site-acceptance"


@dataclass(frozen=True)
class LoggedRun:
    """What the registry needs from a logged training run."""

    run_id: str
    model_uri: str
    baseline_run_id: str | None


def git_commit() -> str:
    """The checked-out commit, or "unknown" outside a git checkout (a container image)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [2, 3]}` -> `{"a.b": 1, "c.0": 2, "c.1": 3}` (prefix joined by ".")."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, list | tuple) and all(_is_number(v) for v in value):
            flat.update({f"{name}.{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_metrics(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a metrics dict, flattened; nulls (undefined rates) are left out."""
    return {k: float(v) for k, v in flatten(values, prefix).items() if _is_number(v)}


def log_params(params: Mapping[str, Any]) -> None:
    flat = {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_history(history: Iterable[Mapping[str, Any]]) -> None:
    """Per-epoch metrics with the epoch as step; fold ensembles log `fold<k>.<metric>`."""
    for index, entry in enumerate(history):
        step = int(entry.get("epoch", index))
        fold = entry.get("fold")
        prefix = f"fold{fold}" if fold is not None else ""
        metrics = {k: v for k, v in numeric_metrics(entry, prefix).items()
                   if not k.endswith(("epoch", "fold"))}
        if metrics:
            mlflow.log_metrics(metrics, step=step)


def log_training_run(outcome, saved_model_dir: str | Path, *, experiment: str,
                     model_card: str, extra_params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, str] | None = None) -> LoggedRun:
    """One CNN run (everything, the SavedModel as its model) and one HOG baseline run."""
    mlflow.set_experiment(experiment)
    commit = git_commit()
    common_tags = {"git_commit": commit, **(tags or {})}
    params = {**outcome.params, **(extra_params or {}), "git_commit": commit}
    with mlflow.start_run(run_name="cnn", tags={**common_tags, "model_family": "cnn"}) as run:
        log_params(params)
        log_history(outcome.history)
        mlflow.log_metrics(numeric_metrics(outcome.validation, VALIDATION_PREFIX))
        mlflow.set_tags({"threshold": f"{outcome.threshold:.6f}",
                         "temperature": f"{outcome.temperature:.6f}"})
        for name, path in (outcome.figures or {}).items():
            mlflow.log_artifact(str(path), artifact_path="figures")
            log.debug("logged figure %s", name)
        mlflow.log_text(model_card, "model_card.md")
        model_uri = log_saved_model(saved_model_dir)
        run_id = run.info.run_id
    log.info("logged CNN run %s (model %s)", run_id, model_uri)
    baseline_run_id = None
    if outcome.baseline:
        with mlflow.start_run(run_name="hog-baseline", tags={
                **common_tags, "model_family": "hog-baseline", "paired_run_id": run_id}) as base:
            log_params({k: v for k, v in params.items() if k.startswith("data")})
            mlflow.log_metrics(numeric_metrics(outcome.baseline, VALIDATION_PREFIX))
            baseline_run_id = base.info.run_id
        log.info("logged HOG baseline run %s", baseline_run_id)
    return LoggedRun(run_id, model_uri, baseline_run_id)


def log_site_run(result: SiteAcceptance, files: dict[str, Path], version: int) -> str:
    """An MLflow run in `site-acceptance` with the figures and the report; returns its id."""
    mlflow.set_experiment(SITE_EXPERIMENT)
    report = result.report
    with mlflow.start_run(run_name=f"{report['site']}-v{version}", tags={
            "site": report["site"], "registry_version": str(version),
            "model_name": report["model_name"],
            "calibration_refused": str(report["calibration_refused"] is not None).lower()}) as run:
        mlflow.log_params({"site": report["site"], "n": report["n"],
                           "target_sensitivity": report["target_sensitivity"],
                           "data_fingerprint": report["data_fingerprint"],
                           "registry_version": version})
        flat = {k: report[k] for k in ("auroc", "cross_fitted_auroc", "ece_before", "ece_after")}
        for prefix in ("site_threshold", "model_threshold"):
            flat.update({f"{prefix}.{k}": report[prefix][k]
                         for k in ("sensitivity", "specificity", "ppv", "npv")})
        mlflow.log_metrics(numeric_metrics(flat, ""))
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="figures" if path.suffix == ".png"
                                else None)
        return run.info.run_id


def load_manifest(reference: str | Path) -> DatasetManifest:
    """A manifest file, or `runs:/<run_id>`: the manifest an MLflow run logged."""
    text = str(reference)
    if text.startswith("runs:/"):
        run_id = text.removeprefix("runs:/").strip("/").split("/")[0]
        try:
            local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{MANIFEST_ARTIFACT}")
        except Exception as err:  # noqa: BLE001 - MLflow raises several kinds; one clear message
            raise DatasetError(f"run {run_id} has no {MANIFEST_ARTIFACT} ({err})") from err
        return DatasetManifest.read(local)
    return DatasetManifest.read(text)


def log_manifest(run_id: str, manifest: DatasetManifest) -> None:
    """The manifest as the run's `dataset/manifest.json` artifact (what `--manifest` reads)."""
    MlflowClient().log_text(run_id, manifest.to_json(), MANIFEST_ARTIFACT)


def log_gate_metrics(run_id: str, gate_metrics: Mapping[str, Any]) -> None:
    """The gate numbers also on the run, next to its validation numbers (`gate.auroc` ...)."""
    timestamp = int(time.time() * 1000)
    metrics = [Metric(k, v, timestamp, 0) for k, v in numeric_metrics(gate_metrics, "gate").items()]
    MlflowClient().log_batch(run_id, metrics=metrics)
