"""Trainer settings (env prefix `CXR_`): training, MLflow, promotion gates, schedule, publishing."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from shared.config import SharedSettings
from shared.contract import MODEL_NAME


class TrainerSettings(SharedSettings):
    """What the trainer reads on top of the shared settings; every field has a working default."""

    # --- training recipe (services.trainer.recipe.TrainConfig.from_settings) ---
    target_sensitivity: float = Field(default=0.95, gt=0, le=1)
    train_epochs: int = Field(default=20, ge=1)
    train_batch_size: int = Field(default=32, ge=1)
    train_folds: int = Field(default=1, ge=1)
    train_seed: int = 0
    train_image_cache_dir: str | None = "var/cache/images"

    # --- MLflow tracking and registry ---
    mlflow_experiment: str = "cxr-pneumonia"
    registered_model_name: str = MODEL_NAME

    # --- promotion gate: absolute floors and the largest regression tolerated vs the champion ---
    gate_min_sensitivity: float = Field(default=0.95, ge=0, le=1)
    gate_min_specificity: float = Field(default=0.80, ge=0, le=1)
    gate_min_auroc: float = Field(default=0.95, ge=0, le=1)
    gate_max_auroc_drop: float = Field(default=0.01, ge=0, le=1)
    gate_max_sensitivity_drop: float = Field(default=0.02, ge=0, le=1)
    # The gate set: whole patients held out of every training run (see docs/training.md).
    gate_fraction: float = Field(default=0.10, gt=0, lt=1)
    gate_seed: int = 20240101

    # --- scheduled retraining ---
    retrain_cron: str = "0 3 * * 0"
    # Longer than the longest retraining: a crashed run frees the lock after this many seconds.
    retrain_lock_ttl_s: int = Field(default=12 * 3600, gt=0)
    retrain_time_limit_s: int = Field(default=10 * 3600, gt=0)

    # --- publishing to the serving folder ---
    # Keep the previous champion loaded next to the new one, so a rollback is one config change.
    serving_keep_previous: bool = True
    # How long a publish waits for the model server (CXR_MODEL_SERVER_GRPC) to load the new
    # version before moving the `stable` label onto it; 0 moves it at once.
    publish_wait_for_load_s: float = Field(default=300, ge=0)
    bundled_models_dir: str = "models"


@lru_cache
def get_settings() -> TrainerSettings:
    """The trainer's settings, read once (tests call `get_settings.cache_clear()`)."""
    return TrainerSettings()
