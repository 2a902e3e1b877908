"""Retraining end to end: train -> export -> log -> register -> gate -> champion + publish (or not).

`retrain(settings)` is what the scheduled Celery task and `python -m services.trainer retrain` run.
The gate set (`gates.split_gate_set`) is cut from the data before training, so no model ever
trains on the images that decide its promotion.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from services.trainer.config import TrainerSettings, get_settings
from services.trainer.gates import GateSet, PromotionGate, split_gate_set
from services.trainer.model_card import render_model_card
from services.trainer.promotion import publish_registered, registry_for
from services.trainer.tracking import git_commit, log_training_run, numeric_metrics

log = logging.getLogger(__name__)


def training_config(settings: TrainerSettings, out_dir: Path, overrides: Mapping[str, Any]):
    """The recipe's `TrainConfig` for this run: its defaults, the data folder, then `overrides`."""
    from services.trainer.recipe import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(fields)}")
    values = {"data_dir": str(settings.data_dir), "out_dir": str(out_dir), **overrides}
    return TrainConfig(**{k: v for k, v in values.items() if k in fields})


def retrain(settings: TrainerSettings | None = None,
            train_overrides: Mapping[str, Any] | None = None) -> dict:
    """Run one retraining; returns a summary (version, gate verdict, what was published)."""
    from services.trainer.dataset import scan_dataset
    from services.trainer.export import export_for_serving
    from services.trainer.recipe import run_training

    settings = settings or get_settings()
    started = time.monotonic()
    registry = registry_for(settings)
    records = scan_dataset(settings.data_dir)
    trainable, gate_records = split_gate_set(records, settings.gate_fraction, settings.gate_seed)
    log.info("data: %d images, %d for training, %d patients' images held for the gate",
             len(records), len(trainable), len(gate_records))
    gate_set = GateSet.from_records(gate_records, settings.image_size,
                                    settings.gate_image_cache_dir)

    with tempfile.TemporaryDirectory(prefix="cxr-retrain-") as scratch:
        work = Path(scratch)
        config = training_config(settings, work / "training", train_overrides or {})
        log.info("training: %s", config)
        outcome = run_training(config, records=trainable)
        log.info("trained: validation AUROC %s, threshold %.4f",
                 outcome.validation.get("auroc"), outcome.threshold)

        saved_model = export_for_serving(
            outcome.models, base_path=work / "export", version=1, threshold=outcome.threshold,
            temperature=outcome.temperature, model_name=settings.model_name)
        commit = git_commit()
        card = render_model_card(
            model_name=settings.registered_model_name, threshold=outcome.threshold,
            temperature=outcome.temperature, params=outcome.params,
            validation=outcome.validation, baseline=outcome.baseline, git_commit=commit)
        gate_params = {"gate.fraction": settings.gate_fraction, "gate.seed": settings.gate_seed,
                       "gate.images": len(gate_records), "gate.set_fingerprint":
                       gate_set.fingerprint, "train.images_available": len(trainable)}
        logged = log_training_run(outcome, saved_model, experiment=settings.mlflow_experiment,
                                  model_card=card, extra_params=gate_params)
        version = registry.register(logged.model_uri, logged.run_id, tags={
            "threshold": f"{outcome.threshold:.6f}", "temperature": f"{outcome.temperature:.6f}",
            "git_commit": commit})

        champion = registry.champion()
        champion_dir = (registry.download_saved_model(champion, work / "champion")
                        if champion is not None else None)
        verdict = PromotionGate.from_settings(settings).evaluate(
            gate_set, saved_model, champion_dir, champion)
        registry.tag_version(version, verdict.as_tags())
        mlflow.MlflowClient().log_batch(logged.run_id, metrics=[
            mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
            for k, v in numeric_metrics(verdict.candidate, "gate").items()])

        published = None
        if verdict.passed:
            registry.promote(version, reason=verdict.reason, by="retrain pipeline")
            published = publish_registered(registry, settings, version,
                                           saved_model_dir=saved_model)
        else:
            log.warning("version %d stays challenger: %s", version, verdict.reason)

    summary = {
        "run_id": logged.run_id, "baseline_run_id": logged.baseline_run_id,
        "version": version, "previous_champion": champion, "promoted": verdict.passed,
        "gate_reason": verdict.reason,
        "gate": {k: verdict.candidate.get(k) for k in ("auroc", "sensitivity", "specificity")},
        "published": dataclasses.asdict(published) if published else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("retrain finished: %s", summary)
    return summary
