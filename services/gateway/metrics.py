"""Prometheus metrics of the gateway: every request by route template and status, uploads, jobs."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import redis.asyncio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import report_delivery

if TYPE_CHECKING:
    from services.gateway.notices import JobNotices

UNMATCHED_ROUTE = "<unmatched>"


class GatewayMetrics:
    """The gateway's collectors in their own registry (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cxr_gateway_requests_total", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("cxr_gateway_request_duration_seconds",
                                 "Time to answer an HTTP request.", ["method", "route"],
                                 registry=self.registry)
        self.upload_bytes = Histogram(
            "cxr_gateway_upload_bytes", "Size of accepted uploads.", registry=self.registry,
            buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6),
        )
        self.uploads_refused = Counter("cxr_gateway_uploads_refused_total",
                                       "Uploads refused, by error code.", ["code"],
                                       registry=self.registry)
        self.scope_refused = Counter(
            "cxr_gateway_scope_refused_total",
            "Films refused at the gateway as outside what the model reads (uploads and STOW-RS), "
            "by scope reason; the worker counts those it refuses, flags or passes.",
            ["reason"], registry=self.registry)
        self.jobs_created = Counter("cxr_gateway_jobs_created_total",
                                    "Prediction jobs created and queued.", registry=self.registry)
        # Live performance from readers' verdicts (docs/architecture.md, "Live performance"):
        # a replaced verdict is counted again under `superseded`, so the current counts are
        # films - superseded (the recording rules in infra/prometheus/alerts.yml do this).
        outcome_labels = ["site", "model_version", "model_label", "reader_label"]
        self.feedback_films = Counter(
            "cxr_feedback_films_total",
            "Reader verdicts on finished predictions, by site, model version, the model's label "
            "and the reader's label.", outcome_labels, registry=self.registry)
        self.feedback_superseded = Counter(
            "cxr_feedback_superseded_total",
            "Reader verdicts replaced by a later one on the same job (same labels as "
            "cxr_feedback_films_total, with the replaced verdict's reader label).",
            outcome_labels, registry=self.registry)
        # The same verdicts against a shadow version's label for the film (shared/shadow.py):
        # its agreement with the readers before anyone approves it.
        self.shadow_feedback_films = Counter(
            "cxr_shadow_feedback_films_total",
            "Reader verdicts on films a shadow version also scored, by site, shadow version, the "
            "shadow version's label and the reader's label.", outcome_labels,
            registry=self.registry)
        self.shadow_feedback_superseded = Counter(
            "cxr_shadow_feedback_superseded_total",
            "Of cxr_shadow_feedback_films_total, the verdicts replaced by a later one (with the "
            "replaced verdict's reader label).", outcome_labels, registry=self.registry)
        self.waiting = Gauge("cxr_gateway_waiting_requests",
                             "Requests waiting for a job to finish (?wait=).",
                             registry=self.registry)
        self.notices_listening = Gauge(
            "cxr_gateway_job_notices_listening",
            "1 while the job notices listener is subscribed; 0 means waits poll the job.",
            registry=self.registry)

        self.pacs_reports = Gauge(
            "cxr_pacs_reports_finished",
            "PACS report deliveries that ended, by final state (sent, failed, skipped, not_sent); "
            "counted in Redis across every report sender.", ["state"], registry=self.registry)
        self.pacs_reports_pending = Gauge(
            "cxr_pacs_reports_pending", "PACS report deliveries that have not ended yet.",
            registry=self.registry)
        self.pacs_report_oldest_pending = Gauge(
            "cxr_pacs_report_oldest_pending_seconds",
            "Age of the oldest PACS report delivery still pending (0 when none).",
            registry=self.registry)

    async def refresh_pacs_reports(self, client: redis.asyncio.Redis) -> None:
        """Read the delivery counts from Redis just before a scrape."""
        counts = await report_delivery.snapshot(client)
        for state, count in counts.outcomes.items():
            self.pacs_reports.labels(state).set(count)
        self.pacs_reports_pending.set(counts.pending)
        self.pacs_report_oldest_pending.set(counts.oldest_pending_s)

    def count_scope_refusal(self, error: Exception) -> None:
        """Count each scope reason of a refused film (nothing for other errors)."""
        for reason in getattr(error, "reasons", ()):
            self.scope_refused.labels(reason).inc()

    def count_feedback(self, site: str, model_version: int, model_label: str,
                       reader_label: str, replaced_label: str | None) -> None:
        """Count one verdict, and take back the one it replaces (if any)."""
        self.feedback_films.labels(site, str(model_version), model_label, reader_label).inc()
        if replaced_label is not None:
            self.feedback_superseded.labels(site, str(model_version), model_label,
                                            replaced_label).inc()

    def count_shadow_feedback(self, site: str, shadow_version: int, shadow_label: str,
                              reader_label: str, replaced_label: str | None) -> None:
        """Count one verdict against the shadow version's label (and take back a replaced one)."""
        self.shadow_feedback_films.labels(site, str(shadow_version), shadow_label,
                                          reader_label).inc()
        if replaced_label is not None:
            self.shadow_feedback_superseded.labels(site, str(shadow_version), shadow_label,
                                                   replaced_label).inc()

    def watch_notices(self, notices: JobNotices) -> None:
        self.waiting.set_function(lambda: notices.waiting)
        self.notices_listening.set_function(lambda: int(notices.listening))


def route_template(scope: Scope, templates: list[tuple[re.Pattern[str], str]]) -> str:
    """The path template (e.g. /v1/predictions/{job_id}) that serves `scope`, not the raw path."""
    route = scope.get("route")  # set by the router on the shared scope once a route matched
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    # Refused before routing (by the access gate or the size limit): match the documented paths.
    for pattern, template in templates:
        if pattern.match(scope["path"]):
            return template
    return UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts and times every HTTP request, /metrics and probes included."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _templates(self, scope: Scope) -> list[tuple[re.Pattern[str], str]]:
        if self._compiled is None:
            app = scope["app"]
            paths = list(app.openapi().get("paths", {}))
            mounts = [route.path for route in app.routes if isinstance(route, Mount)]
            self._compiled = [(compile_path(path)[0], path) for path in paths] + [
                (compile_path(f"{mount}/{{path:path}}")[0], mount) for mount in mounts]
        return self._compiled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = route_template(scope, self._templates(scope))
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
