"""Retraining end to end: train -> export -> log -> register -> gate -> challenger, to approve.

`retrain(settings)` is what the scheduled Celery task and `python -m services.trainer retrain` run.
Its data is versioned (`services.trainer.data.manifest`): the base data set plus every site's
confirmed films up to the cut-off (the run's start by default), or exactly the file set of an
earlier run's manifest; the manifest is logged to the run (`dataset.*` params,
`dataset/manifest.json`). The gate set (`data.splits.split_gate_set`) is cut from the recipe's
records before training, so no model ever trains on the images that decide its promotion.

The new version stays `challenger` with its verdicts as tags (`approval.state` `pending` or
`gates_failed`); a person makes it champion with `python -m services.trainer approve`
(`services.trainer.registry.approval`). Only with `CXR_RETRAIN_AUTO_PROMOTE` does a version that
passed every gate become champion and get published here.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from services.trainer.artifact.drift_reference import compute_reference, write_reference
from services.trainer.artifact.export import export_for_serving
from services.trainer.data.manifest import (
    DatasetManifest,
    TrainingData,
    collect_training_data,
    rebuild_training_data,
)
from services.trainer.data.splits import split_gate_set
from services.trainer.evaluation.model_card import render_model_card
from services.trainer.evaluation.site_calibration import write_report
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.model import architecture_info
from services.trainer.modeling.recipe import run_training
from services.trainer.registry.approval import (
    APPROVAL_STATE_TAG,
    AUTO_PROMOTED,
    GATES_FAILED,
    PENDING,
    PIPELINE_ACTOR,
)
from services.trainer.registry.gates import GateSet, GateVerdict, PromotionGate
from services.trainer.registry.promotion import (
    audit_model_event,
    publish_registered,
    registry_for,
    site_tag,
)
from services.trainer.registry.registry import ModelRegistry
from services.trainer.registry.site_gate import evaluate_sites
from services.trainer.registry.tracking import (
    LoggedRun,
    git_commit,
    log_gate_metrics,
    log_manifest,
    log_site_run,
    log_training_run,
)
from services.trainer.settings import TrainerSettings, get_settings
from shared.schemas import utc_now
from shared.storage import get_storage

log = logging.getLogger(__name__)


def training_data(settings: TrainerSettings, work: Path, cutoff: datetime | None = None,
                  manifest: DatasetManifest | None = None,
                  splits: tuple[str, ...] = ("train", "val")) -> TrainingData:
    """The run's records and manifest: rebuilt from `manifest`, or collected up to `cutoff`.

    Confirmed films are read from the job storage (`CXR_STORAGE_*`) unless
    `CXR_TRAIN_INCLUDE_CONFIRMED` is false; `cutoff` None means now.
    """
    storage = (get_storage(settings)
               if settings.train_include_confirmed or manifest is not None else None)
    if manifest is not None:
        return rebuild_training_data(manifest, settings.data_path, storage, work)
    return collect_training_data(settings.data_path, splits, storage,
                                 (cutoff or utc_now()) if storage is not None else None, work,
                                 site_sets=settings.site_sets)


def retrain(settings: TrainerSettings | None = None,
            train_overrides: Mapping[str, Any] | None = None, cutoff: datetime | None = None,
            manifest: DatasetManifest | None = None) -> dict:
    """Run one retraining; returns a summary (version, gate verdict, what was published).

    `cutoff`: the latest confirmation read (default: now); `manifest`: train on exactly that
    earlier run's file set instead.
    """
    settings = settings or get_settings()
    started = time.monotonic()
    registry = registry_for(settings)
    with tempfile.TemporaryDirectory(prefix="cxr-retrain-") as scratch:
        work = Path(scratch)
        config = TrainConfig.from_settings(settings, out_dir=str(work / "training"),
                                           **dict(train_overrides or {}))
        data = training_data(settings, work / "data", cutoff, manifest,
                             tuple(config.data_splits))
        records = data.records
        trainable, gate_records = split_gate_set(records, settings.gate_fraction,
                                                 settings.gate_seed)
        log.info("data: %d images, %d may be trained on, %d held out for the gate",
                 len(records), len(trainable), len(gate_records))
        gate_set = GateSet.from_records(gate_records, settings.image_size,
                                        settings.train_image_cache_dir)
        log.info("training: %s", config)
        outcome = run_training(config, records=trainable)
        log.info("trained: validation AUROC %s at threshold %.4f",
                 outcome.validation.get("auroc"), outcome.threshold)
        saved_model = _export(outcome, work / "export", settings.model_name)
        _write_drift_reference(saved_model, gate_set, settings)
        logged = _log_run(outcome, saved_model, settings, gate_set, len(trainable), data.manifest)
        version = registry.register(logged.model_uri, logged.run_id, tags={
            "threshold": f"{outcome.threshold:.6f}", "temperature": f"{outcome.temperature:.6f}",
            "git_commit": git_commit()})
        champion = registry.champion()
        verdict, champion_dir = _gate(registry, settings, gate_set, saved_model, champion, work)
        if settings.site_sets:
            verdict = _gate_sites(registry, settings, verdict, saved_model, champion_dir,
                                  version, champion, work)
        registry.tag_version(version, {**verdict.as_tags(),
                                       "baseline_run_id": logged.baseline_run_id or "none"})
        registry.describe(version, _card(outcome, settings, version, verdict))
        log_gate_metrics(logged.run_id, verdict.candidate)
        published = None
        if verdict.passed and settings.retrain_auto_promote:
            published = _auto_promote(registry, settings, version, verdict, saved_model,
                                      champion)
            state = AUTO_PROMOTED
        elif verdict.passed:
            state = PENDING
            log.warning("version %d passed every gate and awaits approval: python -m "
                        "services.trainer approve --version %d --by NAME --reason TEXT",
                        version, version)
        else:
            state = GATES_FAILED
            log.warning("version %d stays challenger: %s", version, verdict.reason)
        registry.tag_version(version, {APPROVAL_STATE_TAG: state})

    summary = {
        "run_id": logged.run_id, "baseline_run_id": logged.baseline_run_id,
        "dataset": {"fingerprint": data.manifest.fingerprint,
                    "cutoff": data.manifest.cutoff.isoformat() if data.manifest.cutoff else None,
                    **data.manifest.counts},
        "version": version, "previous_champion": champion, "promoted": published is not None,
        "approval_state": state, "gate_passed": verdict.passed, "gate_reason": verdict.reason,
        "gate": {k: verdict.candidate.get(k) for k in ("auroc", "sensitivity", "specificity")},
        "published": dataclasses.asdict(published) if published else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("retrain finished: %s", summary)
    return summary


def _auto_promote(registry: ModelRegistry, settings: TrainerSettings, version: int,
                  verdict: GateVerdict, saved_model: Path, champion: int | None):
    """`CXR_RETRAIN_AUTO_PROMOTE`: champion and published with no person in the loop (audited)."""
    reason = f"automatic ({verdict.reason})"
    registry.promote(version, reason=reason, by=PIPELINE_ACTOR)
    published = publish_registered(registry, settings, version, saved_model_dir=saved_model)
    audit_model_event(settings, "model_promote", PIPELINE_ACTOR, version=version,
                      previous_champion=champion, reason=reason, automatic=True,
                      published_to=published.model_base_path)
    return published


def _export(outcome, base: Path, model_name: str) -> Path:
    # Version 1 of a scratch folder: the served version number is the MLflow one, given at
    # publish time (the SavedModel does not contain it).
    return export_for_serving(outcome.models, base_path=base, version=1,
                              threshold=outcome.threshold, temperature=outcome.temperature,
                              model_name=model_name,
                              extra_info=architecture_info(outcome.params))


def _write_drift_reference(saved_model: Path, gate_set: GateSet,
                           settings: TrainerSettings) -> None:
    """The drift check's reference (`shared/drift.py`), from the gate films, in the export."""
    source = {"films": f"gate set of the data set (gate fraction {settings.gate_fraction}, "
                       f"seed {settings.gate_seed})",
              "data_fingerprint": gate_set.fingerprint}
    write_reference(saved_model, compute_reference(saved_model, gate_set.images, source))


def _card(outcome, settings: TrainerSettings, version: int | None = None,
          verdict: GateVerdict | None = None) -> str:
    return render_model_card(
        model_name=settings.registered_model_name, threshold=outcome.threshold,
        temperature=outcome.temperature, params=outcome.params, validation=outcome.validation,
        baseline=outcome.baseline, git_commit=git_commit(), version=version,
        gate=verdict.as_tags() if verdict is not None else None)


def _log_run(outcome, saved_model: Path, settings: TrainerSettings, gate_set: GateSet,
             trainable_images: int, manifest: DatasetManifest) -> LoggedRun:
    card = _card(outcome, settings)
    gate_params = {"gate.fraction": settings.gate_fraction, "gate.seed": settings.gate_seed,
                   "gate.images": len(gate_set.is_pneumonia),
                   "gate.set_fingerprint": gate_set.fingerprint,
                   "data_images_before_gate_split": trainable_images + len(gate_set.is_pneumonia)}
    logged = log_training_run(outcome, saved_model, experiment=settings.mlflow_experiment,
                              model_card=card, extra_params={**gate_params,
                                                             **manifest.mlflow_params()},
                              tags=manifest.mlflow_tags())
    log_manifest(logged.run_id, manifest)
    return logged


def _gate(registry: ModelRegistry, settings: TrainerSettings, gate_set: GateSet,
          candidate_dir: Path, champion: int | None,
          work: Path) -> tuple[GateVerdict, Path | None]:
    champion_dir = (registry.download_saved_model(champion, work / "champion")
                    if champion is not None else None)
    verdict = PromotionGate.from_settings(settings).evaluate(gate_set, candidate_dir,
                                                             champion_dir, champion)
    return verdict, champion_dir


def _gate_sites(registry: ModelRegistry, settings: TrainerSettings, verdict: GateVerdict,
                candidate_dir: Path, champion_dir: Path | None, version: int,
                champion: int | None, work: Path) -> GateVerdict:
    """Add every site's checks to the verdict; record the fitted site points on the version.

    The points are recorded whatever the verdict, so a forced promotion publishes them too; each
    site's report is an MLflow run in the `site-acceptance` experiment.
    """
    sites = evaluate_sites(settings, candidate_dir, champion_dir, version, champion)
    for site, result in sites.candidates.items():
        files = write_report(result, work / "sites" / site)
        run_id = log_site_run(result, files, version)
        registry.tag_version(version, {site_tag(site): result.point.model_dump_json(),
                                       f"site.{site}.run_id": run_id})
    checks = [*verdict.checks, *sites.checks]
    return GateVerdict(all(c.passed for c in checks), checks, verdict.candidate,
                       verdict.champion, verdict.champion_version,
                       {**verdict.extra_tags, **sites.tags()})
