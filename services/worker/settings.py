"""The worker's own settings (env prefix `CXR_`): deadlines, retries, time limits, metrics port."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator

from shared.config import SharedSettings
from shared.contract import GRADCAM_SIGNATURE, SERVING_SIGNATURE, STABLE_LABEL


class WorkerSettings(SharedSettings):
    """What the worker reads on top of `SharedSettings` (listed in docs/settings.md)."""

    predict_timeout_s: float = Field(default=10.0, gt=0, description=(
        "Deadline of each gRPC call to the model server."))
    serving_version_label: str | None = Field(default=STABLE_LABEL, description=(
        "The version label to ask TF Serving for (the trainer's `models.config` puts `stable` "
        "on the registry champion); empty: the server's latest version."))
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
