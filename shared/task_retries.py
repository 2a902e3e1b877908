"""Celery's own retries for the project's job tasks, and the base class that ends them.

A task body raises `TransientFailure` for a failure a later attempt may clear; Celery's autoretry
(`retry_options`) schedules the next attempt with exponential backoff (`factor * 2**retries`
seconds, capped, with full jitter when asked) until `max_retries` retries have run. `RetryingTask`
hears each scheduled retry (`retrying`) and, once the retries are spent, the final failure
(`dead_letter`); every other failure is the body's own to handle.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Retry


class TransientFailure(Exception):
    """`error`, which a later attempt may clear; `detail` is how it is logged and recorded."""

    def __init__(self, error: BaseException, detail: str | None = None) -> None:
        self.error = error
        self.detail = detail if detail is not None else str(error)
        super().__init__(self.detail)


def retry_options(*, max_retries: int, backoff_s: int, backoff_max_s: int,
                  jitter: bool) -> dict[str, Any]:
    """Task options: retry a `TransientFailure` up to `max_retries` times, the n-th retry after
    `backoff_s * 2**(n-1)` seconds at most `backoff_max_s` (a random share of it with `jitter`)."""
    return {"autoretry_for": (TransientFailure,), "max_retries": max_retries,
            "retry_backoff": backoff_s, "retry_backoff_max": backoff_max_s,
            "retry_jitter": jitter}


class RetryingTask(Task):
    """A task whose first argument is a job id, retried by `retry_options`."""

    # Running out of retries is an expected end: the worker logs it on one line, no traceback.
    throws = (TransientFailure,)

    def will_retry(self) -> bool:
        """Whether a `TransientFailure` raised now is retried (else it ends in `dead_letter`)."""
        return self.max_retries is None or self.request.retries < self.max_retries

    def retrying(self, job_id: str, failure: TransientFailure, countdown: float) -> None:
        """A retry of the job's task runs in `countdown` seconds."""

    def dead_letter(self, job_id: str, failure: TransientFailure, retries: int) -> None:
        """The task failed with `failure` after `retries` retries: give the job up."""
        raise NotImplementedError

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, TransientFailure):
            self.retrying(args[0], exc, _countdown(einfo.exception))

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, TransientFailure):
            self.dead_letter(args[0], exc, self.request.retries)


def _countdown(raised: BaseException) -> float:
    """The seconds before the retry that `raised` (Celery's `Retry`, maybe wrapped) announced."""
    retry = raised if isinstance(raised, Retry) else getattr(raised, "exc", None)
    when = retry.when if isinstance(retry, Retry) else None
    return float(when) if isinstance(when, int | float) else 0.0
