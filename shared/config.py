"""Settings every service reads (env prefix `CXR_`); each service subclasses `SharedSettings`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    """What every service reads; the variable names are listed in docs/architecture.md."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore", case_sensitive=False)

    env: Environment = "development"
    data_dir: str = "../shared/data/chest_xray"

    storage_backend: Literal["local", "s3"] = "local"
    storage_root: str = "var/storage"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    redis_url: str = "redis://127.0.0.1:6379/0"

    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=100_000_000, gt=0)
    min_image_side: int = Field(default=64, ge=1)
    # DICOM structure, checked on the encoded bytes before any parser builds a dataset: sequence
    # nesting depth, data elements in all (items included), the largest element other than the
    # pixel data, and the working memory that decoding the pixels would take (estimated from the
    # header, refused before decoding).
    max_dicom_depth: int = Field(default=12, ge=1)
    max_dicom_elements: int = Field(default=10_000, ge=16)
    max_dicom_element_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_decode_memory_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    image_size: int = Field(default=224, ge=8)
    # Longest side of the heatmap overlay PNG (the X-ray is scaled down to it, never up).
    heatmap_max_side: int = Field(default=1024, ge=64)

    model_name: str = MODEL_NAME
    model_server_grpc: str = "127.0.0.1:8500"
    model_server_rest: str = "http://127.0.0.1:8501"
    model_base_path: str = "var/serving"
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    # DICOM received over C-STORE or STOW-RS is stored de-identified unless this is true.
    pacs_keep_identifiers: bool = False
    # Re-identification keys (shared.reidentification): Fernet keys, comma-separated (empty: none
    # kept), their own folder apart from the job storage, and how long a key stays readable.
    reid_keys: SecretStr = SecretStr("")
    reid_storage_root: str = "var/reidentification"
    reid_retention_days: int = Field(default=30, ge=1)

    # Which site each API client and each calling DICOM AE title belongs to ("key:site,...");
    # the job carries its site and is answered at that site's operating point (docs/sites.md).
    site_clients: str = ""
    site_ae_titles: str = ""

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
