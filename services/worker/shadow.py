"""Shadow scoring: a second model version scores each answered job without answering it.

With `CXR_SHADOW_VERSION_LABEL` set, `cxr.predict` sends `cxr.shadow(job_id)` to queue `shadow`
once the job's result is stored and the job marked succeeded, so the answer never waits for it.
The task reads the stored upload, asks the model server for the version under that label, puts
its answer at the job's site operating point and stores a `shared.shadow.ShadowOutput` at
`shadow/{job_id}.json`. Nothing of it reaches the job record or the client. A shadow failure is
logged and counted (`cxr_worker_shadow_predictions{outcome="failed"}`), never retried and never
touches the job. A worker consumes the queue when started with `-Q inference,shadow` (or a
separate worker with `-Q shadow`, so shadow scoring never takes an inference slot).
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

import numpy as np

from services.worker import metrics
from services.worker.celery_app import app
from services.worker.grpc_serving import ServingClient
from services.worker.job import WorkerDeps
from services.worker.result import build_result
from services.worker.settings import WorkerSettings
from services.worker.sites import apply_operating_point
from shared.imaging import DecodeLimits, decode_xray, to_model_input
from shared.jobs.keys import shadow_key
from shared.jobs.queue import SHADOW_QUEUE, SHADOW_TASK
from shared.jobs.records import JobStatus
from shared.process_local import PerProcess
from shared.schemas import PredictionResult, utc_now
from shared.shadow import ShadowAnswer, ShadowOutput

log = logging.getLogger(__name__)

class ShadowOutcome(StrEnum):
    STORED = "stored"
    SKIPPED = "skipped"  # no succeeded job (erased, or not answered)
    SAME_VERSION = "same_version"  # the label names the version that answered: nothing to learn
    FAILED = "failed"


def _client(settings: WorkerSettings) -> ServingClient:
    return ServingClient(settings.model_server_grpc, settings.model_name,
                         settings.predict_timeout_s, settings.shadow_version_label,
                         predict_signature=settings.serving_signature,
                         heatmap_signature=settings.gradcam_signature,
                         max_message_bytes=settings.grpc_max_message_bytes)


_clients: dict[str, PerProcess[ServingClient]] = {}


def shadow_client(settings: WorkerSettings) -> ServingClient:
    """This process's client for the shadow label (gRPC channels are not fork-safe)."""
    label = settings.shadow_version_label or ""
    holder = _clients.setdefault(label, PerProcess(lambda: _client(settings),
                                                   close=ServingClient.close))
    return holder.get()


def request_shadow(job_id: str, settings: WorkerSettings) -> None:
    """Queue the job's shadow scoring when a shadow label is set; never raises."""
    if not settings.shadow_version_label:
        return
    try:
        app.send_task(SHADOW_TASK, args=[job_id], queue=SHADOW_QUEUE)
    except Exception:  # the answer is stored already; shadow scoring is best effort
        log.exception("could not queue the shadow scoring of job %s", job_id)
        metrics.SHADOW_PREDICTIONS.labels(settings.shadow_version_label,
                                          ShadowOutcome.FAILED).inc()


def _answer(result: PredictionResult) -> ShadowAnswer:
    return ShadowAnswer(model=result.model, label=result.label, subtype=result.subtype,
                        pneumonia_probability=result.pneumonia_probability,
                        threshold=result.threshold)


def score_shadow(job_id: str, deps: WorkerDeps, client: ServingClient) -> ShadowOutcome:
    """Score one answered job with the shadow version and store its output (no job change)."""
    record = deps.jobs.get(job_id)
    if record is None or record.status != JobStatus.SUCCEEDED or record.result is None:
        return ShadowOutcome.SKIPPED
    settings = deps.settings
    decoded = decode_xray(deps.storage.get(record.upload_key), DecodeLimits.from_settings(settings))
    batch = to_model_input(decoded.pixels, settings.image_size)[np.newaxis]
    started = time.perf_counter()
    answer = client.predict(batch)
    inference_ms = round((time.perf_counter() - started) * 1000, 3)
    champion = record.result
    if answer.version == champion.model.version:
        return ShadowOutcome.SAME_VERSION
    point = deps.operating_points.get(answer.version, record.site)
    result = apply_operating_point(build_result(answer), record.site, point)
    output = ShadowOutput(job_id=job_id, site=record.site, shadow=_answer(result),
                          class_probabilities=result.class_probabilities,
                          champion=_answer(champion), scored_at=utc_now(),
                          inference_ms=inference_ms)
    deps.storage.put(shadow_key(job_id), output.model_dump_json().encode(),
                     content_type="application/json")
    if deps.jobs.get(job_id) is None:  # erased while it was scored: leave nothing behind
        deps.storage.delete(shadow_key(job_id))
        return ShadowOutcome.SKIPPED
    metrics.SHADOW_AGREEMENT.labels(str(answer.version), str(champion.model.version),
                                    str(result.label == champion.label).lower()).inc()
    return ShadowOutcome.STORED


@app.task(name=SHADOW_TASK, ignore_result=True)
def shadow(job_id: str) -> str:
    from services.worker.tasks import worker_deps

    deps = worker_deps()
    label = deps.settings.shadow_version_label
    if not label:
        return ShadowOutcome.SKIPPED
    try:
        client = shadow_client(deps.settings)
        outcome = score_shadow(job_id, deps, client)
    except Exception as exc:
        log.warning("shadow scoring of job %s with label %r failed: %s", job_id, label, exc)
        metrics.SHADOW_PREDICTIONS.labels(label, ShadowOutcome.FAILED).inc()
        return ShadowOutcome.FAILED
    metrics.SHADOW_PREDICTIONS.labels(label, outcome).inc()
    return outcome
