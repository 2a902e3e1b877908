"""The work behind `cxr.predict`: plain functions, no Celery, callable and testable alone.

One job: read the upload, decode and preprocess it with `shared.imaging` (the only preprocessing),
screen its scope (`services.worker.scope`: a refused film never reaches the model), ask the model
server for the prediction and its Grad-CAM from one model version (one call when the
model's `gradcam` signature also answers the prediction), write the result JSON and the Grad-CAM
map (uint8 `.npy`; the overlay over the X-ray is drawn when someone first reads it, see
`shared.heatmap`), and record the outcome on the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import redis

from services.worker import metrics, scope
from services.worker.errors import AttemptsExhaustedError, JobBusyError
from services.worker.grpc_serving import ServingClient
from services.worker.result import build_result
from services.worker.settings import WorkerSettings
from services.worker.sites import OperatingPoints, apply_operating_point
from shared.contract import HEATMAP
from shared.dicom_intake.receive import intake_route
from shared.drift import DriftRecorder, film_statistics
from shared.errors import CXRError, JobNotFoundError, NotChestRadiographError
from shared.heatmap import encode_attention
from shared.imaging import DecodeLimits, decode_xray, to_model_input
from shared.jobs.keys import attention_key, heatmap_key, job_lock_key, result_key
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.redis_clients import redis_client
from shared.schemas import Failure, PredictionResult, ScopeReason, utc_now
from shared.storage import Storage, get_storage, storage_at

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALREADY_FINISHED = "already_finished"


@dataclass
class WorkerDeps:
    """What `process_job` talks to; built once per worker process."""

    settings: WorkerSettings
    redis: redis.Redis
    storage: Storage
    jobs: JobStore
    serving: ServingClient
    operating_points: OperatingPoints
    # One more storage write in flight beside the task's own (each local write waits on fsync).
    writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="storage-write"))

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WorkerDeps:
        client = redis_client(  # survives a Redis restart (shared.redis_clients)
            settings.redis_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        storage = get_storage(settings)
        serving = ServingClient(
            settings.model_server_grpc,
            settings.model_name,
            settings.predict_timeout_s,
            settings.serving_version_label,
            predict_signature=settings.serving_signature,
            heatmap_signature=settings.gradcam_signature,
            max_message_bytes=settings.grpc_max_message_bytes,
        )
        operating_points = OperatingPoints(
            lambda: storage_at(settings.model_base_path, settings.s3_endpoint_url,
                               settings.s3_region),
            settings.model_name, settings.site_operating_point_refresh_s)
        return cls(settings, client, storage, JobStore(client, storage), serving,
                   operating_points)

    def drift_recorder(self) -> DriftRecorder:
        return DriftRecorder(self.redis, max_films=self.settings.drift_max_films,
                             window_s=self.settings.drift_window_days * 86400)

    def close(self) -> None:
        self.writer.shutdown(wait=True)
        self.serving.close()
        self.redis.close()


@dataclass(frozen=True)
class FilmFacts:
    """What the monitoring reads of an answered film: its model input and the model's outputs (for
    the drift statistics) and its input kind."""

    model_input: np.ndarray
    outputs: Mapping[str, Any]
    image_format: str
    bit_depth: int | str
    width: int
    height: int


class StageTimer:
    """Milliseconds per stage, also observed in the worker's stage histogram."""

    def __init__(self) -> None:
        self.timings_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings_ms[name] = round(seconds * 1000, 3)
            metrics.STAGE_SECONDS.labels(name).observe(seconds)


@contextmanager
def job_lock(deps: WorkerDeps, job_id: str) -> Iterator[None]:
    """Hold the job for one delivery; a killed worker's lock expires after the time limit."""
    lock = deps.redis.lock(job_lock_key(job_id), timeout=deps.settings.lock_ttl_s, blocking=False)
    if not lock.acquire():
        raise JobBusyError(f"Job {job_id} is being processed by another delivery.")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("lock of job %s expired before the job finished", job_id)


def process_job(job_id: str, deps: WorkerDeps) -> Outcome:
    """Run job `job_id` once: a job already finished is left alone, whatever delivered it again.

    Permanent errors (a corrupt image, a model that refuses the input) fail the job with their code
    and message; transient ones propagate so the caller can retry, and so does
    `AttemptsExhaustedError` for the caller to dead-letter the job.
    """
    with job_lock(deps, job_id):
        record = deps.jobs.mark_running(job_id)  # JobNotFoundError when there is no record
        if record.status.finished:
            log.info("job %s is already %s; nothing to do", job_id, record.status)
            return Outcome.ALREADY_FINISHED
        if record.attempts > deps.settings.job_max_attempts:
            # Deliveries after a killed worker do not count as Celery retries; this stops a job
            # that kills its worker from being delivered forever.
            raise AttemptsExhaustedError(
                f"Job {job_id} was started {record.attempts - 1} times without finishing."
            )
        try:
            result, attention, facts = predict_record(record, deps)
        except CXRError as error:
            if error.transient:
                raise
            log.info("job %s failed: %s (%s)", job_id, error.code, error.message)
            deps.jobs.mark_failed(job_id, job_failure(error))
            if isinstance(error, NotChestRadiographError):
                scope.count(error.reasons)
            return Outcome.FAILED
        # Both files side by side, and both stored before the job says it succeeded.
        attention_written = deps.writer.submit(
            deps.storage.put, attention_key(job_id), attention,
            content_type="application/octet-stream"
        )
        try:
            deps.storage.put(
                result_key(job_id), result.model_dump_json().encode(),
                content_type="application/json",
            )
        finally:
            attention_written.result()
        # The overlay itself is drawn when first read (shared.heatmap.heatmap_png).
        try:
            deps.jobs.mark_succeeded(job_id, result, heatmap_key=heatmap_key(job_id),
                                     attention_key=attention_key(job_id))
        except JobNotFoundError:
            # Erased (retention purge) while it ran: leave nothing of it behind.
            for key in (result_key(job_id), attention_key(job_id)):
                deps.storage.delete(key)
            raise
        scope.count(result.scope.reasons if result.scope else ())
        metrics.count_prediction(record.site, result.model.version, result.label,
                                 result.pneumonia_probability)
        observe_film(record, result, facts, deps)
        return Outcome.SUCCEEDED


def input_source(record: JobRecord) -> str:
    """How the film came: `upload` (HTTPS API), `stow-rs` or `c-store`."""
    if record.source != "dicom":
        return "upload"
    return intake_route(record) or "dicom"


def observe_film(record: JobRecord, result: PredictionResult, facts: FilmFacts,
                 deps: WorkerDeps) -> None:
    """Input metrics and the drift record of an answered film; never fails the job."""
    try:
        metrics.count_input(record.site, input_source(record), facts.image_format,
                            facts.bit_depth, facts.width, facts.height)
        deps.drift_recorder().record(record.site, record.job_id, result.model.version,
                                     film_statistics(facts.model_input, facts.outputs))
    except Exception:  # the answer is stored; monitoring must not undo it
        log.exception("job %s: could not record its drift statistics", record.job_id)


def job_failure(error: CXRError) -> Failure:
    """The recorded failure; a refused film keeps the scope reasons that refused it."""
    reasons = getattr(error, "reasons", None)
    return Failure(code=error.code, message=error.message,
                   reasons=[ScopeReason(reason) for reason in reasons] if reasons else None)


def predict_record(record: JobRecord,
                   deps: WorkerDeps) -> tuple[PredictionResult, bytes, FilmFacts]:
    """The prediction for one job's upload, its Grad-CAM map as `.npy` bytes and what the
    monitoring keeps of the film (no writes)."""
    started = record.started_at or utc_now()
    queue_seconds = max(0.0, (started - record.created_at).total_seconds())
    metrics.QUEUE_SECONDS.observe(queue_seconds)
    timer = StageTimer()
    settings = deps.settings
    with timer.stage("decode"):
        decoded = decode_xray(
            deps.storage.get(record.upload_key), DecodeLimits.from_settings(settings)
        )
        found = scope.intake_reasons(record, decoded)  # a refused film never reaches the model
        batch = to_model_input(decoded.pixels, settings.image_size)[np.newaxis]
    with timer.stage("inference"):
        # The prediction and the heatmap come from one version: the picture explains this answer.
        answer = deps.serving.predict_with_heatmap(batch)
    film_scope = scope.with_model_reasons(found, answer.outputs)
    with timer.stage("heatmap"):
        attention = encode_attention(answer.outputs[HEATMAP][0])
    timings = {"queue": round(queue_seconds * 1000, 3), **timer.timings_ms}
    timings["total"] = round((utc_now() - record.created_at).total_seconds() * 1000, 3)
    # The job's site answers at its own operating point for the version that answered.
    point = deps.operating_points.get(answer.version, record.site)
    result = apply_operating_point(build_result(answer, 0, timings), record.site, point)
    meta = decoded.metadata
    facts = FilmFacts(batch[0], answer.outputs, str(meta.get("format", "")),
                      meta.get("bit_depth", ""), int(meta.get("width", decoded.pixels.shape[1])),
                      int(meta.get("height", decoded.pixels.shape[0])))
    return result.model_copy(update={"scope": film_scope}), attention, facts


def fail_job(job_id: str, failure: Failure, deps: WorkerDeps) -> None:
    """Record a failure decided outside `process_job` (retries exhausted, an unexpected error)."""
    record = deps.jobs.get(job_id)
    if record is not None and not record.status.finished:
        deps.jobs.mark_failed(job_id, failure)
