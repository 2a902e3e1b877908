"""Prometheus metrics of the worker, served over HTTP by the worker's main process.

Celery's prefork pool runs tasks in child processes, so the metrics use prometheus-client's
multiprocess mode: each child writes its samples under `PROMETHEUS_MULTIPROC_DIR` and the main
process serves their sum. That variable must be set before the worker starts (as for gunicorn);
with the `solo` or `threads` pool tasks run in the main process and it is not needed.
"""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from shared import pool_metrics  # noqa: F401 - makes the multiprocess folder before any metric

# Seconds; inference and queue times of a CPU model server span milliseconds to minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


JOBS = Counter("cxr_worker_jobs", "Prediction tasks finished, by outcome.", ["outcome"])
RETRIES = Counter("cxr_worker_retries", "Tasks scheduled again after a transient error.", ["code"])
DEAD_LETTERED = Counter("cxr_worker_dead_lettered", "Jobs moved to the dead-letter list.")
WEBHOOK_ATTEMPTS = Counter(
    "cxr_worker_webhook_attempts",
    "Webhook POSTs, by result: accepted (2xx), refused (another answer) or no_answer.",
    ["result"])
WEBHOOK_RETRIES = Counter("cxr_worker_webhook_retries", "Webhook attempts scheduled again.")
WEBHOOK_DELIVERIES = Counter(
    "cxr_worker_webhook_deliveries",
    "Webhook deliveries ended, by outcome: delivered, dead_lettered (never accepted) or dropped "
    "(the job or the client's webhook was gone).", ["outcome"])
SCOPE_OUTCOMES = Counter(
    "cxr_worker_scope_outcomes",
    "Films screened, by outcome: refused, flagged (answered outside the validated population) "
    "or in_scope.", ["outcome"])
SCOPE_REASONS = Counter(
    "cxr_worker_scope_reasons", "Scope reasons raised, by reason and the film's outcome.",
    ["reason", "outcome"])
QUEUE_SECONDS = Histogram(
    "cxr_worker_queue_seconds", "Time from job creation to processing.", buckets=LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "cxr_worker_stage_seconds",
    "Time spent in each processing stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)

# The prediction mix (docs/architecture.md, "Live performance"): what each site is told, per
# model version, to compare with the model's validation mix and to see a site's input change.
PROBABILITY_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 20))
PNEUMONIA_PROBABILITY = Histogram(
    "cxr_worker_pneumonia_probability",
    "Calibrated pneumonia probability of each answered film, by site and model version.",
    ["site", "model_version"], buckets=PROBABILITY_BUCKETS)
PREDICTED_LABELS = Counter(
    "cxr_worker_predicted_labels", "Answered films by label, site and model version.",
    ["site", "model_version", "label"])


# Shadow scoring (services/worker/shadow.py): how each shadow attempt ended, by the version label
# asked for, and whether the shadow version's label is the one the champion answered.
SHADOW_PREDICTIONS = Counter(
    "cxr_worker_shadow_predictions",
    "Shadow scorings of answered jobs, by version label and outcome.",
    ["version_label", "outcome"])
SHADOW_AGREEMENT = Counter(
    "cxr_worker_shadow_champion_agreement",
    "Stored shadow outputs, by shadow version, champion version and whether their labels agree.",
    ["shadow_version", "champion_version", "agrees"])


def count_prediction(site: str, model_version: int, label: str, probability: float) -> None:
    version = str(model_version)
    PNEUMONIA_PROBABILITY.labels(site, version).observe(probability)
    PREDICTED_LABELS.labels(site, version, label).inc()


# What the sites send: each answered film's source (upload, stow-rs, c-store), format, bit depth
# and size, per site.
SIDE_BUCKETS = (224, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096)
INPUT_FILMS = Counter(
    "cxr_worker_input_films",
    "Answered films by site, source (upload, stow-rs, c-store), format and bit depth.",
    ["site", "source", "format", "bit_depth"])
INPUT_SIDE_PIXELS = Histogram(
    "cxr_worker_input_side_pixels",
    "Decoded size of each answered film, in pixels, by site and side (width, height).",
    ["site", "side"], buckets=SIDE_BUCKETS)


def count_input(site: str, source: str, image_format: str, bit_depth: int | str,
                width: int, height: int) -> None:
    INPUT_FILMS.labels(site, source, image_format, str(bit_depth)).inc()
    INPUT_SIDE_PIXELS.labels(site, "width").observe(width)
    INPUT_SIDE_PIXELS.labels(site, "height").observe(height)


# The drift check (shared/drift.py, docs/monitoring.md): the latest figures per site. Set in the
# process that ran the check; across pool processes the most recent value counts.
DRIFT_KS = Gauge(
    "cxr_drift_ks", "Kolmogorov-Smirnov D of a site's recent films against the model's "
    "reference, by statistic.", ["site", "statistic"], multiprocess_mode="mostrecent")
DRIFT_PSI = Gauge(
    "cxr_drift_psi", "Population stability index of a site's recent films against the model's "
    "reference, by statistic.", ["site", "statistic"], multiprocess_mode="mostrecent")
DRIFT_ALERT = Gauge(
    "cxr_drift_alert", "1 when a site's recent films crossed the drift threshold, else 0.",
    ["site"], multiprocess_mode="mostrecent")
DRIFT_FILMS = Gauge(
    "cxr_drift_films", "Films the last drift check of a site compared.", ["site"],
    multiprocess_mode="mostrecent")
DRIFT_CHECKED = Gauge(
    "cxr_drift_last_check_timestamp_seconds", "When a site's drift was last checked (Unix time).",
    ["site"], multiprocess_mode="mostrecent")


def set_drift(site: str, films: int, alert: bool, ks: dict[str, float],
              psi: dict[str, float], checked_at: float) -> None:
    DRIFT_FILMS.labels(site).set(films)
    DRIFT_ALERT.labels(site).set(1 if alert else 0)
    DRIFT_CHECKED.labels(site).set(checked_at)
    for name, value in ks.items():
        DRIFT_KS.labels(site, name).set(value)
    for name, value in psi.items():
        DRIFT_PSI.labels(site, name).set(value)
