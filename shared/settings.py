"""Settings every service reads (env prefix `CXR_`); each service subclasses `SharedSettings`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contract import MODEL_NAME
from shared.operating_point import parse_site_map, site_for

Environment = Literal["development", "test", "production"]


class InsecureSettingError(ValueError):
    """A secret still holds its empty or shipped default while running in production."""


def require_real_secret(
    env: str, name: str, value: str | SecretStr | None, default: str = ""
) -> None:
    """Refuse an empty or default secret when `env` is production; call it from a service validator.

    Raising ValueError inside a pydantic validator turns into a ValidationError naming the field,
    so a misconfigured production service stops at start-up instead of running with a known secret.
    """
    if env != "production":
        return
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not plain or plain == default:
        raise InsecureSettingError(
            f"{name} must be set to a real secret when CXR_ENV=production "
            "(it is empty or still the default)."
        )


class SharedSettings(BaseSettings):
    """What every service reads; the variables are listed in docs/settings.md."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", case_sensitive=False)

    env: Environment = Field(default="development", description=(
        "`production` refuses default secrets and a missing TLS certificate at start-up."))
    data_dir: str = Field(default="../shared/data/chest_xray", description=(
        "Training data set in the Kaggle layout (`train/`, `val/`, `test/`, each with `NORMAL/` "
        "and `PNEUMONIA/`); a relative path is taken from the repository root (`/app` in the "
        "images). The trainer worker refuses to start when no data set is there."))

    storage_backend: Literal["local", "s3"] = Field(default="local", description=(
        "Where uploads, heatmaps and reports are kept: `local` (folder `CXR_STORAGE_ROOT`) or "
        "`s3`."))
    storage_root: str = Field(default="var/storage", description="Local storage folder.")
    s3_bucket: str = Field(default="", description="S3 bucket of the `s3` storage backend.")
    s3_prefix: str = Field(default="", description="Key prefix inside the S3 bucket.")
    s3_endpoint_url: str | None = Field(default=None, description=(
        "S3 endpoint; set it for MinIO or another S3-compatible store."))
    s3_region: str | None = Field(default=None, description="S3 region.")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description=(
        "Redis: the Celery broker and the job records."))

    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description=(
        "Largest accepted upload."))
    max_image_pixels: int = Field(default=100_000_000, gt=0, description=(
        "Largest decoded image in pixels (refuses decompression bombs)."))
    min_image_side: int = Field(default=64, ge=1, description=(
        "Smallest accepted image side in pixels."))
    max_dicom_depth: int = Field(default=12, ge=1, description=(
        "Deepest sequence nesting in a DICOM instance, checked on the encoded bytes before any "
        "parser builds a dataset."))
    max_dicom_elements: int = Field(default=10_000, ge=16, description=(
        "Most data elements in a DICOM instance, sequence items included."))
    max_dicom_element_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description=(
        "Largest DICOM data element other than the pixel data."))
    max_decode_memory_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024, description=(
        "Most working memory decoding one DICOM image may take, estimated from its header "
        "(stored samples plus 17 bytes per pixel) and refused before decoding."))
    image_size: int = Field(default=224, ge=8, description="Side of the model's square input.")
    heatmap_max_side: int = Field(default=1024, ge=64, description=(
        "Longest side of the heatmap overlay PNG (the X-ray is scaled down to it, never up)."))

    model_name: str = Field(default=MODEL_NAME, description="Name of the served model.")
    model_server_grpc: str = Field(default="127.0.0.1:8500", description=(
        "TF Serving gRPC target (`host:port`)."))
    model_server_rest: str = Field(default="http://127.0.0.1:8501", description=(
        "TF Serving REST base URL."))
    model_base_path: str = Field(default="var/serving", description=(
        "Serving model folder, `<base>/<model_name>/<version>/` plus `models.config`: a local "
        "path or `s3://bucket/prefix`."))
    mlflow_tracking_uri: str = Field(default="http://127.0.0.1:5000", description=(
        "MLflow tracking server and model registry."))
    pacs_keep_identifiers: bool = Field(default=False, description=(
        "Store DICOM received by C-STORE or STOW-RS with its patient identifiers instead of "
        "de-identified (a DICOM uploaded to `POST /v1/predictions` is always de-identified)."))
    reid_keys: SecretStr = Field(default=SecretStr(""), description=(
        "Fernet keys for the re-identification keys (`docs/privacy.md`), comma-separated: the "
        "first encrypts, all decrypt; empty: no re-identification key is kept."))
    reid_storage_backend: Literal["local", "s3"] = Field(default="local", description=(
        "Where re-identification keys are kept, apart from the job storage: `local` (folder "
        "`CXR_REID_STORAGE_ROOT`, one machine or a volume shared by the services that use it) "
        "or `s3` (bucket `CXR_REID_S3_BUCKET`, for containers and pods on several hosts)."))
    reid_storage_root: str = Field(default="var/reidentification", description=(
        "Folder of the `local` re-identification key storage."))
    reid_s3_bucket: str = Field(default="", description=(
        "Bucket of the `s3` re-identification key storage: its own bucket, never "
        "`CXR_S3_BUCKET`, so that a bucket policy can grant it to the services that use keys "
        "only. Reached at `CXR_S3_ENDPOINT_URL` in `CXR_S3_REGION`."))
    reid_s3_prefix: str = Field(default="", description=(
        "Key prefix inside `CXR_REID_S3_BUCKET`."))
    reid_s3_access_key_id: SecretStr = Field(default=SecretStr(""), description=(
        "Access key of the S3 user that may use `CXR_REID_S3_BUCKET`; empty: the default AWS "
        "credentials (`AWS_ACCESS_KEY_ID`, a pod or instance role)."))
    reid_s3_secret_access_key: SecretStr = Field(default=SecretStr(""), description=(
        "Secret key going with `CXR_REID_S3_ACCESS_KEY_ID`."))
    reid_retention_days: int = Field(default=30, ge=1, description=(
        "Days a re-identification key stays readable after it was written; then it is purged."))

    audit_log: str = Field(default="stdout", description=(
        "Where the audit trail goes (one JSON line per event, `docs/privacy.md`): `stdout`, or "
        "a file path, appended to. Never mixed into the service's own log."))
    retention_days: int = Field(default=0, ge=0, description=(
        "Days a prediction job (upload, result, heatmap, record) is kept after it was created; "
        "older jobs are deleted by the scheduled purge. 0: kept until deleted."))
    retention_purge_cron: str = Field(default="30 2 * * *", description=(
        "When Celery beat sends the retention purge (`cxr.purge`, run by the inference worker): "
        "a 5-field cron expression in UTC."))
    drift_check_cron: str = Field(default="15 * * * *", description=(
        "When Celery beat sends the drift check (`cxr.drift_check`, run by the inference worker, "
        "`docs/monitoring.md`): a 5-field cron expression in UTC."))

    site_clients: str = Field(default="", description=(
        "`client:site,client2:site2`: the site of each API client (gateway, STOW-RS); a job is "
        "answered at its site's operating point, unlisted clients at `default` "
        "(`docs/sites.md`)."))
    site_ae_titles: str = Field(default="", description=(
        "`AETITLE:site,...`: the site of each calling DICOM AE title (C-STORE SCP); unlisted "
        "titles belong to `default`."))

    @model_validator(mode="after")
    def _check_reidentification_storage(self) -> SharedSettings:
        if self.reid_storage_backend == "s3":
            if not self.reid_s3_bucket:
                raise ValueError("CXR_REID_STORAGE_BACKEND=s3 needs CXR_REID_S3_BUCKET.")
            if self.reid_s3_bucket == self.s3_bucket:
                raise ValueError(
                    "CXR_REID_S3_BUCKET must be a bucket of its own, not CXR_S3_BUCKET: the "
                    "re-identification keys are kept apart from the job storage.")
        if (not self.reid_s3_access_key_id.get_secret_value()) != (
                not self.reid_s3_secret_access_key.get_secret_value()):
            raise ValueError("Set both CXR_REID_S3_ACCESS_KEY_ID and "
                             "CXR_REID_S3_SECRET_ACCESS_KEY, or neither.")
        return self

    @field_validator("site_clients", "site_ae_titles")
    @classmethod
    def _check_site_map(cls, value: str) -> str:
        parse_site_map(value, "site map")
        return value

    def site_of_client(self, client: str | None) -> str:
        """The site of an API client (`CXR_SITE_CLIENTS`), `default` when unlisted."""
        return site_for(parse_site_map(self.site_clients, "CXR_SITE_CLIENTS"), client)

    def site_of_ae_title(self, ae_title: str | None) -> str:
        """The site of a calling AE title (`CXR_SITE_AE_TITLES`), `default` when unlisted."""
        return site_for(parse_site_map(self.site_ae_titles, "CXR_SITE_AE_TITLES"),
                        (ae_title or "").strip())


@lru_cache
def get_settings() -> SharedSettings:
    """The process settings, read once (tests call `get_settings.cache_clear()` to reread)."""
    return SharedSettings()
