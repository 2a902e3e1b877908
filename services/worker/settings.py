"""The worker's own settings (env prefix `CXR_`): deadlines, retries, time limits, metrics port."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator

from shared.contract import GRADCAM_SIGNATURE, SERVING_SIGNATURE, STABLE_LABEL
from shared.settings import SharedSettings

WEBHOOK_SECRET_MIN_CHARS = 16


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where one API client's webhooks go, and the key that signs them."""

    url: str
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"WebhookEndpoint(url={self.url!r})"


def parse_client_map(text: str, what: str) -> dict[str, str]:
    """`"client:value,client2:value2"` as a dict (split at each entry's first colon, as the API
    keys are, so a value may hold colons); a malformed entry is a ValueError."""
    mapping: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        client, sep, value = entry.partition(":")
        if not sep or not client.strip() or not value.strip():
            raise ValueError(f"{what}: an entry is not CLIENT:VALUE")
        mapping[client.strip()] = value.strip()
    return mapping


def webhook_endpoints(urls: str, secrets: str) -> dict[str, WebhookEndpoint]:
    """Each client's endpoint: an `https` URL with a host and a secret of at least
    `WEBHOOK_SECRET_MIN_CHARS` characters, or ValueError naming the client (never the secret)."""
    keys = parse_client_map(secrets, "CXR_WEBHOOK_SECRETS")
    found: dict[str, WebhookEndpoint] = {}
    for client, url in parse_client_map(urls, "CXR_WEBHOOK_URLS").items():
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"CXR_WEBHOOK_URLS: the URL of {client} must be https://HOST/...")
        secret = keys.get(client, "")
        if len(secret) < WEBHOOK_SECRET_MIN_CHARS:
            raise ValueError(f"CXR_WEBHOOK_SECRETS: {client} needs a secret of at least "
                             f"{WEBHOOK_SECRET_MIN_CHARS} characters")
        found[client] = WebhookEndpoint(url, secret)
    return found


class WorkerSettings(SharedSettings):
    """What the worker reads on top of `SharedSettings` (listed in docs/settings.md)."""

    predict_timeout_s: float = Field(default=10.0, gt=0, description=(
        "Deadline of each gRPC call to the model server."))
    serving_version_label: str | None = Field(default=STABLE_LABEL, description=(
        "The version label to ask TF Serving for (the trainer's `models.config` puts `stable` "
        "on the registry champion); empty: the server's latest version."))
    shadow_version_label: str | None = Field(default=None, description=(
        "A second version label (`shadow`: what `python -m services.trainer shadow` puts on a "
        "challenger) that scores every answered job again, after the answer is stored, on queue "
        "`shadow`; its outputs are kept at `shadow/{job_id}.json`, never answered, and a "
        "failure there never fails the job (`docs/training.md`, Shadow mode). Empty: off."))
    site_operating_point_refresh_s: float = Field(default=10.0, ge=0, description=(
        "How long a site's operating point (read beside the serving version under "
        "`CXR_MODEL_BASE_PATH`) is used before its file is read again (`docs/sites.md`)."))
    serving_signature: str = Field(default=SERVING_SIGNATURE, description=(
        "Name of the model's prediction signature."))
    gradcam_signature: str = Field(default=GRADCAM_SIGNATURE, description=(
        "Name of the model's Grad-CAM signature."))
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description=(
        "gRPC send and receive limit (gRPC's own default, 4 MB, is too small)."))

    task_max_retries: int = Field(default=8, ge=0, description=(
        "Retries of transient errors (model server, storage, Redis) before the job goes to the "
        "dead-letter list."))
    retry_backoff_s: int = Field(default=2, ge=1, description=(
        "Factor of the exponential backoff between retries, in seconds."))
    retry_backoff_max_s: int = Field(default=120, ge=1, description=(
        "Longest countdown before a retry, in seconds."))
    retry_jitter: bool = Field(default=True, description=(
        "Full jitter on the retry countdown."))
    task_soft_time_limit_s: int = Field(default=120, gt=0, description=(
        "Celery soft time limit of one task; must be below `CXR_TASK_TIME_LIMIT_S`."))
    task_time_limit_s: int = Field(default=180, gt=0, description=(
        "Celery hard time limit of one task: past it the process running it is killed."))
    broker_visibility_timeout_s: int = Field(default=600, gt=0, description=(
        "Redis delivers an unacknowledged message again after this long; it must exceed "
        "`CXR_TASK_TIME_LIMIT_S` + `CXR_RETRY_BACKOFF_MAX_S`, or running and waiting tasks are "
        "delivered twice."))
    job_lock_ttl_s: int | None = Field(default=None, gt=0, description=(
        "How long one delivery holds a job's lock, so two deliveries never run at once; unset: "
        "the hard time limit plus 30 seconds."))

    job_max_attempts: int = Field(default=12, ge=1, description=(
        "Starts of one job (retries and redeliveries) before the dead-letter list; must exceed "
        "`CXR_TASK_MAX_RETRIES`."))
    worker_concurrency: int | None = Field(default=None, ge=1, description=(
        "Pool processes; unset: two per CPU the process may use (a job mostly waits on gRPC and "
        "storage). Set it in containers, where the CPU count is the node's, not the CPU limit."))

    dead_letter_key: str = Field(default="cxr:dead-letter", description=(
        "Redis list holding the dead letters."))
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535, description=(
        "Port of the worker's Prometheus endpoint; unset: none is served."))
    worker_metrics_address: str = Field(default="0.0.0.0", description=(
        "Listen address of the Prometheus endpoint."))

    drift_test: Literal["ks", "psi"] = Field(default="ks", description=(
        "The drift check's test (`docs/monitoring.md`): `ks`, the two-sample Kolmogorov-Smirnov "
        "statistic D, or `psi`, the population stability index over the reference's deciles. "
        "Both are exported; this one decides the alert."))
    drift_ks_threshold: float = Field(default=0.25, gt=0, le=1, description=(
        "A site is in drift alert when the KS statistic D of any recorded statistic reaches "
        "this (with `CXR_DRIFT_TEST=ks`)."))
    drift_psi_threshold: float = Field(default=0.25, gt=0, description=(
        "A site is in drift alert when the PSI of any recorded statistic reaches this (with "
        "`CXR_DRIFT_TEST=psi`)."))
    drift_min_films: int = Field(default=200, ge=1, description=(
        "Fewest recorded films of a site (in the window, of the version answering) before the "
        "drift check judges it; below, it reports the count and no alert."))
    drift_window_days: float = Field(default=7.0, gt=0, description=(
        "The drift check compares the films of this many last days; older records are dropped."))
    drift_max_films: int = Field(default=100_000, ge=1, description=(
        "Most films kept per site for the drift check (the newest); also the most one check "
        "reads."))

    @property
    def drift_threshold(self) -> float:
        """The threshold of the chosen drift test."""
        return self.drift_ks_threshold if self.drift_test == "ks" else self.drift_psi_threshold

    webhook_urls: str = Field(default="", description=(
        "`client:https://host/path,client2:https://...`: the URL that hears each of that API "
        "client's jobs once it has finished (`docs/architecture.md`, \"Webhooks\"); only "
        "`https` URLs are accepted. Unlisted clients get no webhook."))
    webhook_secrets: SecretStr = Field(default=SecretStr(""), description=(
        "`client:secret,...`: the HMAC-SHA256 key that signs each client's webhook; every "
        "client in `CXR_WEBHOOK_URLS` needs one of at least 16 characters."))
    webhook_ca_bundle: str | None = Field(default=None, description=(
        "PEM file of the certificate authorities trusted for webhook receivers; unset: the "
        "system's."))
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60, description=(
        "Deadline of one webhook request (connect, send and read the answer)."))
    webhook_max_retries: int = Field(default=10, ge=0, description=(
        "Retries of a webhook the receiver did not accept (no answer, 408, 425, 429 or 5xx) "
        "before it goes to the webhook dead-letter list; other answers are not retried."))
    webhook_backoff_s: int = Field(default=2, ge=1, description=(
        "Factor of the exponential backoff (full jitter) between webhook retries, in seconds."))
    webhook_backoff_max_s: int = Field(default=300, ge=1, description=(
        "Longest countdown before a webhook retry, in seconds."))
    webhook_dead_letter_key: str = Field(default="cxr:webhook-dead-letter", description=(
        "Redis list holding the webhooks that were never accepted."))

    @model_validator(mode="after")
    def _check_webhooks(self) -> WorkerSettings:
        # A URL without a usable secret stops the worker at start-up, not at the first job.
        endpoints = webhook_endpoints(self.webhook_urls, self.webhook_secrets.get_secret_value())
        if endpoints and (self.broker_visibility_timeout_s
                          <= self.task_time_limit_s + self.webhook_backoff_max_s):
            raise ValueError(
                "CXR_BROKER_VISIBILITY_TIMEOUT_S must exceed CXR_TASK_TIME_LIMIT_S + "
                "CXR_WEBHOOK_BACKOFF_MAX_S when webhooks are set, or waiting webhook retries are "
                "delivered twice")
        return self

    @property
    def webhooks(self) -> dict[str, WebhookEndpoint]:
        """Client -> its webhook endpoint (`CXR_WEBHOOK_URLS`, `CXR_WEBHOOK_SECRETS`)."""
        return webhook_endpoints(self.webhook_urls, self.webhook_secrets.get_secret_value())

    @model_validator(mode="after")
    def _check_time_limits(self) -> WorkerSettings:
        # With Redis, a message not acked within the visibility timeout is delivered again: it must
        # outlast the longest a task can run, plus the longest countdown a retry waits in a worker.
        if self.job_max_attempts <= self.task_max_retries:
            raise ValueError("CXR_JOB_MAX_ATTEMPTS must exceed CXR_TASK_MAX_RETRIES")
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("CXR_TASK_SOFT_TIME_LIMIT_S must be below CXR_TASK_TIME_LIMIT_S")
        if self.broker_visibility_timeout_s <= self.task_time_limit_s + self.retry_backoff_max_s:
            raise ValueError(
                "CXR_BROKER_VISIBILITY_TIMEOUT_S must exceed CXR_TASK_TIME_LIMIT_S + "
                "CXR_RETRY_BACKOFF_MAX_S, or running and waiting tasks are delivered twice"
            )
        return self

    @property
    def lock_ttl_s(self) -> int:
        """How long one delivery holds a job: past the hard time limit the holder is gone."""
        return self.job_lock_ttl_s or self.task_time_limit_s + 30


@lru_cache
def get_settings() -> WorkerSettings:
    """The worker's settings, read once (tests call `get_settings.cache_clear()`)."""
    return WorkerSettings()
