"""Which report failures Celery retries, how often, and what the report's state says meanwhile
and at the end (the task body run eagerly, delivery and state writes replaced)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from services.pacs import tasks
from services.pacs.sender import PermanentSendError, TransientSendError
from shared.task_retries import TransientFailure


@pytest.fixture
def states(monkeypatch) -> list[tuple[str, int, dict]]:
    """The report states the task records, in order; no Redis, storage or PACS behind them."""
    recorded: list[tuple[str, int, dict]] = []
    monkeypatch.setattr(tasks, "report_deps", lambda: SimpleNamespace())
    monkeypatch.setattr(tasks, "record_state",
                        lambda deps, job_id, state, attempt, **details:
                        recorded.append((state, attempt, details)))
    monkeypatch.setattr(tasks.pacs_report, "max_retries", 2)
    return recorded


def attempts(outcome: str) -> float:
    return REGISTRY.get_sample_value("cxr_pacs_report_attempts_total", {"outcome": outcome}) or 0.0


def test_a_transient_failure_is_retried_then_fails_the_report(states, monkeypatch):
    sends = []

    def destination_down(job_id, deps, attempt):
        sends.append(attempt)
        raise TransientSendError("association rejected (transient)")

    monkeypatch.setattr(tasks, "deliver_report", destination_down)
    retried, failed = attempts("retried"), attempts("failed")
    outcome = tasks.pacs_report.apply(args=["job-1"])

    assert outcome.failed() and isinstance(outcome.result, TransientFailure)
    assert sends == [1, 2, 3]  # the first send and two retries
    assert [(state, attempt) for state, attempt, _ in states] == [
        ("pending", 1), ("pending", 2), ("failed", 3)]
    assert states[0][2] == {"last_error": "association rejected (transient)"}
    assert states[-1][2] == {"reason": "retries exhausted: association rejected (transient)",
                             "permanent": False}
    assert (attempts("retried") - retried, attempts("failed") - failed) == (2, 1)


def test_a_permanent_rejection_fails_the_report_at_once(states, monkeypatch):
    sends = []

    def refused(job_id, deps, attempt):
        sends.append(attempt)
        raise PermanentSendError("C-STORE refused: 0xA700")

    monkeypatch.setattr(tasks, "deliver_report", refused)
    retried = attempts("retried")
    assert tasks.pacs_report.apply(args=["job-1"]).get() == "failed"
    assert sends == [1]
    assert states == [("failed", 1, {"reason": "C-STORE refused: 0xA700", "permanent": True})]
    assert attempts("retried") == retried
