"""Trainer settings (env prefix `CXR_`): training, MLflow, promotion gates, schedule, publishing."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from services.trainer.data.dataset import DatasetError, scan_dataset
from shared.contract import MODEL_NAME
from shared.operating_point import check_site_name
from shared.settings import SharedSettings

# The repository (the image's /app): a relative CXR_DATA_DIR is read from here, not from the
# directory a process happens to start in.
REPO_ROOT = Path(__file__).resolve().parents[2]


class TrainingDataMissingError(RuntimeError):
    """The retraining data set is not where `CXR_DATA_DIR` says: the trainer refuses to start."""


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

    # --- training recipe (services.trainer.modeling.config.TrainConfig.from_settings) ---
    target_sensitivity: float = Field(default=0.95, gt=0, le=1, description=(
        "The sensitivity the decision threshold is chosen to reach."))
    site_threshold_confidence: float | None = Field(default=0.95, gt=0, lt=1, description=(
        "A site's threshold reaches the target sensitivity with this probability over the draw "
        "of its acceptance set (a one-sided binomial bound, `services/trainer/evaluation/"
        "thresholds.py`); empty: it reaches it on average. The site report says when a "
        "cross-fitted half had too few pneumonia films for it."))
    train_epochs: int = Field(default=5, ge=1, description=(
        "Training epochs (at most: early stopping keeps the best epoch's weights)."))
    train_batch_size: int = Field(default=32, ge=1, description="Training batch size.")
    train_folds: int = Field(default=1, ge=1, description=(
        "1: a single patient-level validation split; 2 or more: patient-level cross-validation, "
        "one network per fold (`services/trainer/modeling/recipe.py`)."))
    train_seed: int = Field(default=0, description="Random seed of the training run.")
    train_image_cache_dir: str | None = Field(default="var/cache/images", description=(
        "Cache of decoded, preprocessed training images; empty: no cache."))
    train_include_confirmed: bool = Field(default=True, description=(
        "Retraining also reads every site's reader-confirmed films (`confirmed/` in storage) "
        "up to the run's cut-off; false: the base data set (`CXR_DATA_DIR`) only."))

    # --- MLflow tracking and registry ---
    mlflow_experiment: str = Field(default="cxr-pneumonia", description=(
        "MLflow experiment of the retraining runs."))
    registered_model_name: str = Field(default=MODEL_NAME, description=(
        "Name of the model in the MLflow registry."))

    # --- promotion gate: absolute floors and the largest regression tolerated vs the champion ---
    gate_min_sensitivity: float = Field(default=0.95, ge=0, le=1, description=(
        "Promotion gate: floor of the sensitivity at the model's threshold on the gate set."))
    gate_min_specificity: float = Field(default=0.80, ge=0, le=1, description=(
        "Promotion gate: floor of the specificity at the model's threshold on the gate set."))
    gate_min_auroc: float = Field(default=0.95, ge=0, le=1, description=(
        "Promotion gate: floor of the AUROC on the gate set."))
    gate_max_auroc_drop: float = Field(default=0.01, ge=0, le=1, description=(
        "Promotion gate: largest AUROC loss tolerated against the champion."))
    gate_max_sensitivity_drop: float = Field(default=0.02, ge=0, le=1, description=(
        "Promotion gate: largest sensitivity loss tolerated against the champion."))
    gate_fraction: float = Field(default=0.10, gt=0, lt=1, description=(
        "Share of the images cut off as the gate set: whole patients held out of every training "
        "run (`docs/training.md`)."))
    gate_seed: int = Field(default=20240101, description=(
        "Seed of the gate-set split; the same seed and data give the same patients."))

    # --- sites (docs/sites.md) ---
    site_acceptance_sets: str = Field(default="", description=(
        "`site:DIR,site2:DIR2`: each site's labelled acceptance set (a DIR holds `NORMAL/` and "
        "`PNEUMONIA/`, or is a CSV of `file,label[,patient]`); a version is promoted only if its "
        "cross-fitted figures pass the site floors and drops at every listed site."))
    site_min_sensitivity: float = Field(default=0.95, ge=0, le=1, description=(
        "Floor of a site's cross-fitted sensitivity."))
    site_min_specificity: float = Field(default=0.85, ge=0, le=1, description=(
        "Floor of a site's cross-fitted specificity."))
    site_max_sensitivity_drop: float = Field(default=0.02, ge=0, le=1, description=(
        "Largest sensitivity loss against the champion's on the same site's set."))
    site_max_specificity_drop: float = Field(default=0.03, ge=0, le=1, description=(
        "Largest specificity loss against the champion's on the same site's set."))

    @field_validator("site_threshold_confidence", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("site_acceptance_sets")
    @classmethod
    def _check_site_sets(cls, value: str) -> str:
        parse_site_sets(value)
        return value

    @property
    def data_path(self) -> Path:
        """`CXR_DATA_DIR`, a relative path taken from the repository root (the image's /app)."""
        path = Path(self.data_dir).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def require_training_data(self) -> Path:
        """The data folder, or TrainingDataMissingError naming the setting and the path.

        Called when the trainer worker starts, so a deployment without its data set stops there
        with this message instead of failing the first scheduled retraining.
        """
        path = self.data_path
        try:
            scan_dataset(path, find_duplicates=False)
        except (DatasetError, OSError) as err:
            raise TrainingDataMissingError(
                f"CXR_DATA_DIR={self.data_dir!r} (resolved to {path}) is not a readable chest "
                f"X-ray data set: {err}. Mount the data set there or point CXR_DATA_DIR at it "
                "(docs/deployment.md, \"Training data\")") from err
        return path

    @property
    def site_sets(self) -> dict[str, str]:
        """Site -> its acceptance set (`CXR_SITE_ACCEPTANCE_SETS`)."""
        return parse_site_sets(self.site_acceptance_sets)

    # --- scheduled retraining ---
    retrain_cron: str = Field(default="0 3 * * 0", description=(
        "Retraining schedule for Celery beat: a 5-field cron expression in UTC."))
    retrain_lock_ttl_s: int = Field(default=12 * 3600, gt=0, description=(
        "TTL of the retraining lock: longer than the longest retraining, so a crashed run frees "
        "it; a second trigger while the lock is held is skipped."))
    retrain_time_limit_s: int = Field(default=10 * 3600, gt=0, description=(
        "Time limit of one retraining run."))

    retrain_auto_promote: bool = Field(default=False, description=(
        "Promote and publish a retrained version that passed every gate without a person's "
        "approval; off: it stays `challenger` until `python -m services.trainer approve`."))

    # --- publishing to the serving folder ---
    serving_keep_previous: bool = Field(default=True, description=(
        "Keep the previous champion loaded next to the new one, so a rollback is one config "
        "change."))
    publish_wait_for_load_s: float = Field(default=300, ge=0, description=(
        "How long a publish waits for the model server (`CXR_MODEL_SERVER_GRPC`) to load the new "
        "version before moving the `stable` label onto it; 0 moves it at once."))
    bundled_models_dir: str = Field(default="models", description=(
        "Folder of the bundled SavedModels (`<dir>/<model_name>/<version>/`) that `bootstrap` "
        "registers and publishes when the registry has no champion."))


@lru_cache
def get_settings() -> TrainerSettings:
    """The trainer's settings, read once (tests call `get_settings.cache_clear()`)."""
    return TrainerSettings()
