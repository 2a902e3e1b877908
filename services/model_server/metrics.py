"""Prometheus metrics, served on the REST port at TF Serving's `/monitoring/prometheus/metrics`."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.model_server.errors import ServingError

METRICS_PATH = "/monitoring/prometheus/metrics"

registry = CollectorRegistry()

REQUESTS = Counter(
    "model_server_requests",
    "Requests answered, by API, method, model, version, signature and status.",
    ["api", "method", "model_name", "version", "signature_name", "status"],
    registry=registry,
)
REQUEST_LATENCY = Histogram(
    "model_server_request_latency_seconds",
    "Time to answer a request.",
    ["api", "method", "model_name", "version", "signature_name"],
    registry=registry,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LOADED_VERSIONS = Gauge(
    "model_server_loaded_versions",
    "Versions AVAILABLE for inference.",
    ["model_name"],
    registry=registry,
)
LOAD_FAILURES = Counter(
    "model_server_load_failures",
    "Version loads that failed.",
    ["model_name"],
    registry=registry,
)
WARMUP_RECORDS = Counter(
    "model_server_warmup_records",
    "Warm-up requests replayed before a version took traffic.",
    ["model_name", "version"],
    registry=registry,
)


def record_request(
    api: str,
    method: str,
    model_name: str,
    version: int | None,
    signature_name: str,
    status: str,
    seconds: float,
) -> None:
    version_label = str(version) if version is not None else ""
    REQUESTS.labels(api, method, model_name, version_label, signature_name, status).inc()
    REQUEST_LATENCY.labels(api, method, model_name, version_label, signature_name).observe(seconds)


class RequestRecord:
    """What a request resolved to, filled in while it runs, for its metric labels."""

    def __init__(self, model_name: str, signature_name: str = "") -> None:
        self.model_name = model_name
        self.version: int | None = None
        self.signature_name = signature_name


@contextmanager
def observed(api: str, method: str, model_name: str, signature_name: str = ""):
    """Count and time one request; the status label is the gRPC code name it ended with."""
    record = RequestRecord(model_name, signature_name)
    started = time.perf_counter()
    status = "INTERNAL"
    try:
        yield record
        status = "OK"
    except ServingError as exc:
        status = exc.code.name
        raise
    finally:
        record_request(
            api,
            method,
            record.model_name,
            record.version,
            record.signature_name,
            status,
            time.perf_counter() - started,
        )
