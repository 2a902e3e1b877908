"""The gateway's settings (env prefix `CXR_`) on top of what every service reads."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, model_validator

from shared.settings import SharedSettings, require_real_secret


class GatewaySettings(SharedSettings):
    """Knobs of the HTTP service; Redis, storage and limits come from `SharedSettings`."""

    api_keys: SecretStr = Field(default=SecretStr(""), description=(
        "`client:key,client2:key2`; only sha256 digests are kept after start-up. Empty: refused "
        "in production; in development a demo key is generated into `CXR_DEMO_KEY_FILE`."))
    demo_key_file: str = Field(default="var/demo-api-key", description=(
        "Where a development gateway without keys writes its generated demo key."))
    rate_limit_per_minute: int = Field(default=120, ge=1, description=(
        "Requests per client per clock minute (counted in Redis, shared by replicas)."))
    max_wait_seconds: float = Field(default=30.0, ge=0.0, le=300.0, description=(
        "Cap on a request's `?wait=`."))
    wait_poll_seconds: float = Field(default=1.0, gt=0.0, le=60.0, description=(
        "A `?wait=` request answers when the job's finished notice arrives (Redis pub/sub); it "
        "also re-reads the job this often, in case a notice is lost or pub/sub is unavailable."))
    body_read_timeout_seconds: float = Field(default=120.0, gt=0.0, description=(
        "Seconds a request's whole body may take to arrive, counted from its headers; a body "
        "still arriving then (a client trickling bytes) is answered 408 and its connection "
        "closed. The default lets a 50 MB upload arrive at about 3.5 Mbit/s."))
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, description=(
        "How long an `Idempotency-Key` is remembered."))

    gateway_host: str = Field(default="127.0.0.1", description="Gateway listen address.")
    gateway_port: int = Field(default=8443, ge=0, le=65535, description="Gateway listen port.")
    gateway_tls: bool = Field(default=True, description=(
        "`false` serves plain HTTP, for a gateway behind a proxy that terminates TLS."))
    tls_cert: str | None = Field(default=None, description=(
        "PEM certificate file; required in production while `CXR_GATEWAY_TLS` is on. In "
        "development a self-signed localhost certificate is made in `CXR_TLS_DIR`."))
    tls_key: str | None = Field(default=None, description=(
        "PEM private key file of `CXR_TLS_CERT`."))
    tls_dir: str = Field(default="var/tls", description=(
        "Where a development gateway keeps its self-signed certificate."))

    gateway_metrics_port: int = Field(default=9102, ge=0, le=65535, description=(
        "Port of the gateway's internal Prometheus endpoint (plain HTTP `GET /metrics`, for the "
        "scraper only); the public port serves no metrics. 0: no metrics are served."))
    gateway_metrics_host: str = Field(default="127.0.0.1", description=(
        "Listen address of the internal metrics endpoint: `0.0.0.0` in a container, where the "
        "port is not published (compose) and a network policy admits only Prometheus "
        "(Kubernetes)."))
    upstream_timeout_seconds: float = Field(default=3.0, gt=0.0, description=(
        "Seconds to wait for the model server and MLflow when answering `/v1/models/current` "
        "and `/readyz`."))

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
