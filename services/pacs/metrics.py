"""Prometheus metrics of the DICOM node and of the report sender, each on its own internal port.

The C-STORE SCP (`python -m services.pacs`) is one process with a thread per association: it
serves its own registry on `CXR_PACS_METRICS_PORT`. The report sender is a Celery worker whose
prefork pool runs sends in child processes, so, as the inference worker does, it uses
prometheus-client's multiprocess mode: each child writes its samples under
`PROMETHEUS_MULTIPROC_DIR` and the main process serves their sum on
`CXR_PACS_SENDER_METRICS_PORT`. That variable must be set before the sender starts (with the
`solo` or `threads` pool it is not needed); the SCP serves its own process's metrics either way.

The sender counts attempts; finished deliveries are counted by the gateway from the job records
(`cxr_pacs_reports_finished`), not here.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    Counter,
    Gauge,
)

from shared import pool_metrics  # noqa: F401 - makes the multiprocess folder before any metric

# ---- the C-STORE SCP ----
ASSOCIATIONS = Counter(
    "cxr_pacs_associations",
    "Association requests, by outcome (accepted, rejected) and the rejection's reason "
    "(calling_ae_title_not_allowed, association_limit; empty when accepted).",
    ["outcome", "reason"])
CONNECTIONS_CLOSED = Counter(
    "cxr_pacs_connections_closed",
    "Connections closed before anything was read: the sender address already held "
    "CXR_PACS_SCP_MAX_CONNECTIONS_PER_ADDRESS open connections.")
C_STORE_REQUESTS = Counter(
    "cxr_pacs_c_store_requests",
    "C-STORE requests, by the status answered (success, duplicate_sop_instance, "
    "cannot_understand, out_of_resources, processing_failure) and reason: the disposition of a "
    "success (queued, duplicate), the error code of a refusal, empty otherwise.",
    ["status", "reason"])
RECEIVED_BYTES = Counter(
    "cxr_pacs_received_bytes", "Bytes of the instances received by C-STORE, as sent.")
OPEN_ASSOCIATIONS = Gauge(
    "cxr_pacs_open_associations",
    "Associations open on the C-STORE SCP now, established or still being negotiated.")

# ---- the report sender ----
REPORT_ATTEMPTS = Counter(
    "cxr_pacs_report_attempts",
    "Report send attempts, by outcome: sent, skipped (no destination), not_sent (sender not "
    "allowed), not_applicable (nothing to deliver), retried (a transient error, tried again "
    "later) or failed (a permanent error, or retries exhausted).",
    ["outcome"])


def count_association(accepted: bool, reason: str = "") -> None:
    ASSOCIATIONS.labels("accepted" if accepted else "rejected", reason).inc()


def count_c_store(status: str, reason: str = "", received_bytes: int = 0) -> None:
    C_STORE_REQUESTS.labels(status, reason).inc()
    if received_bytes:
        RECEIVED_BYTES.inc(received_bytes)


def watch_open_associations(count: Callable[[], int]) -> None:
    """The gauge reads `count()` at each scrape (the SCP's single process only)."""
    OPEN_ASSOCIATIONS.set_function(count)
