"""The worker's own settings (env prefix `CXR_`): deadlines, retries, time limits, metrics port."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator

from shared.config import SharedSettings
from shared.contract import GRADCAM_SIGNATURE, SERVING_SIGNATURE, STABLE_LABEL


class WorkerSettings(SharedSettings):
    """What the worker reads on top of `SharedSettings`; names are in docs/architecture.md."""

    predict_timeout_s: float = Field(default=10.0, gt=0)
    # The version label to ask for (TF Serving's `version_labels`); empty: the server's latest.
    serving_version_label: str | None = STABLE_LABEL
    # How long a site's operating point is used before its file is read again.
    site_operating_point_refresh_s: float = Field(default=10.0, ge=0)
    serving_signature: str = SERVING_SIGNATURE
    gradcam_signature: str = GRADCAM_SIGNATURE
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    task_max_retries: int = Field(default=8, ge=0)
    retry_backoff_s: int = Field(default=2, ge=1)
    retry_backoff_max_s: int = Field(default=120, ge=1)
    retry_jitter: bool = True
    task_soft_time_limit_s: int = Field(default=120, gt=0)
    task_time_limit_s: int = Field(default=180, gt=0)
    broker_visibility_timeout_s: int = Field(default=600, gt=0)
    job_lock_ttl_s: int | None = Field(default=None, gt=0)

    job_max_attempts: int = Field(default=12, ge=1)
    # Pool processes; unset: two per CPU the process may use (a job mostly waits on gRPC and
    # storage). Set it in containers, where the CPU count is the node's, not the CPU limit.
    worker_concurrency: int | None = Field(default=None, ge=1)

    dead_letter_key: str = "cxr:dead-letter"
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    worker_metrics_address: str = "0.0.0.0"

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
