"""Trainer settings (env prefix `CXR_`): training, MLflow, promotion gates, schedule, publishing."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator

from shared.config import SharedSettings
from shared.contract import MODEL_NAME
from shared.operating_point import check_site_name


def parse_site_sets(text: str) -> dict[str, str]:
    """`"site:DIR,site2:DIR2"` as {site: DIR}; the site name comes before the first colon."""
    sets: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        site, sep, path = entry.partition(":")
        if not sep or not path.strip():
            raise ValueError(f"CXR_SITE_ACCEPTANCE_SETS: {entry!r} is not SITE:DIR")
        sets[check_site_name(site.strip())] = path.strip()
    return sets


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

    # --- sites (docs/sites.md): each site's acceptance set, "site:DIR,site2:DIR2" (a DIR holds
    # NORMAL/ and PNEUMONIA/, or is a CSV of file,label[,patient]); a version is promoted only if
    # at every listed site its cross-fitted figures meet these floors and lose no more than the
    # allowed drop against the champion's on the same set ---
    site_acceptance_sets: str = ""
    site_min_sensitivity: float = Field(default=0.95, ge=0, le=1)
    site_min_specificity: float = Field(default=0.85, ge=0, le=1)
    site_max_sensitivity_drop: float = Field(default=0.02, ge=0, le=1)
    site_max_specificity_drop: float = Field(default=0.03, ge=0, le=1)

    @field_validator("site_acceptance_sets")
    @classmethod
    def _check_site_sets(cls, value: str) -> str:
        parse_site_sets(value)
        return value

    @property
    def site_sets(self) -> dict[str, str]:
        """Site -> its acceptance set (`CXR_SITE_ACCEPTANCE_SETS`)."""
        return parse_site_sets(self.site_acceptance_sets)

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
