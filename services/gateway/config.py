"""The gateway's settings (env prefix `CXR_`) on top of what every service reads."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, model_validator

from shared.config import SharedSettings, require_real_secret


class GatewaySettings(SharedSettings):
    """Knobs of the HTTP service; Redis, storage and limits come from `SharedSettings`."""

    # "client:key,client2:key2"; only hashes are kept after start-up (services.gateway.auth).
    api_keys: SecretStr = SecretStr("")
    # Where a development gateway without keys writes its generated demo key.
    demo_key_file: str = "var/demo-api-key"
    rate_limit_per_minute: int = Field(default=120, ge=1)
    max_wait_seconds: float = Field(default=30.0, ge=0.0, le=300.0)
    # A `?wait=` request answers when the job's "finished" notice arrives (Redis pub/sub); it also
    # re-reads the job this often, in case a notice is lost or pub/sub is unavailable.
    wait_poll_seconds: float = Field(default=1.0, gt=0.0, le=60.0)
    # How long an Idempotency-Key is remembered.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8443, ge=0, le=65535)
    # False serves plain HTTP, for a gateway behind a proxy that terminates TLS.
    gateway_tls: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    # Where a development gateway keeps its self-signed certificate.
    tls_dir: str = "var/tls"

    audit_log: str | None = None
    # Seconds to wait for the model server and MLflow when answering /v1/models/current, /readyz.
    upstream_timeout_seconds: float = Field(default=3.0, gt=0.0)

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> GatewaySettings:
        require_real_secret(self.env, "CXR_API_KEYS", self.api_keys)
        if self.env == "production" and self.gateway_tls and not (self.tls_cert and self.tls_key):
            raise ValueError(
                "CXR_TLS_CERT and CXR_TLS_KEY must be set when CXR_ENV=production "
                "(or CXR_GATEWAY_TLS=false behind a proxy that terminates TLS)."
            )
        return self

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: the upload limit plus room for the multipart framing."""
        return self.max_upload_bytes + 64 * 1024


@lru_cache
def get_settings() -> GatewaySettings:
    """The process's settings, read once; tests call `get_settings.cache_clear()`."""
    return GatewaySettings()
