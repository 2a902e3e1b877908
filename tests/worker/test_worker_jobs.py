"""A real Celery worker, Redis and model server: jobs end with a result, a heatmap and metrics."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from shared.heatmap import decode_attention, heatmap_png
from shared.imaging import DecodeLimits
from shared.jobs.keys import attention_key, heatmap_key, result_key
from shared.jobs.records import JobStatus
from shared.schemas import PredictionResult
from tests.support.model_server import start_model_server
from tests.worker.jobs import (
    WorkerStack,
    metric_value,
    storage_file,
    wait_for_metric,
    worker_stack,
    xray_jpeg,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[WorkerStack]:
    root = tmp_path_factory.mktemp("worker-jobs")
    server = start_model_server(root / "serving")
    try:
        with worker_stack(root, redis_server.url, server) as started:
            yield started
    finally:
        server.stop()


def test_a_job_succeeds_with_every_field_and_a_png_heatmap(stack):
    job_id = stack.jobs.submit(xray_jpeg(480, 400))
    record = stack.jobs.wait_status(job_id, JobStatus.SUCCEEDED, log=stack.worker.log_tail())

    result = record.result
    assert result.label in ("NORMAL", "PNEUMONIA")
    assert result.label == ("PNEUMONIA" if result.pneumonia_probability >= result.threshold
                            else "NORMAL")
    classes = result.class_probabilities
    assert classes.normal + classes.bacterial + classes.viral == pytest.approx(1.0, abs=1e-4)
    assert result.pneumonia_probability == pytest.approx(classes.bacterial + classes.viral,
                                                         abs=1e-4)
    if result.label == "PNEUMONIA":
        assert result.subtype == ("viral" if classes.viral > classes.bacterial else "bacterial")
    else:
        assert result.subtype is None
    assert result.threshold == pytest.approx(0.5)  # the tiny model's own operating point
    assert (result.model.name, result.model.version) == ("cxr-pneumonia", 1)
    assert set(result.timings_ms) == {"queue", "decode", "inference", "heatmap", "total"}
    assert all(value >= 0 for value in result.timings_ms.values())
    assert result.timings_ms["total"] >= result.timings_ms["inference"]
    assert record.attempts == 1 and record.started_at and record.finished_at

    stored = PredictionResult.model_validate_json(stack.storage.get(result_key(job_id)))
    assert stored == result
    # The worker stores the Grad-CAM map; the overlay is drawn on its first read.
    assert record.attention_key == attention_key(job_id)
    attention = decode_attention(stack.storage.get(attention_key(job_id)))
    assert attention.shape == (224, 224)
    assert record.heatmap_key == heatmap_key(job_id)
    assert not stack.storage.exists(heatmap_key(job_id))
    drawn = heatmap_png(stack.storage, record, DecodeLimits(), max_side=1024)
    heatmap = Image.open(io.BytesIO(drawn))
    assert heatmap.format == "PNG" and heatmap.mode == "RGB"
    assert heatmap.size == (400, 480)  # the decoded X-ray's own size
    assert stack.storage.get(heatmap_key(job_id)) == drawn  # kept for the next read


def test_a_corrupt_upload_fails_at_once_with_its_reason(stack):
    read = stack.worker.metrics_text
    retries_before = metric_value(read(), "cxr_worker_retries_total")
    cut_off = xray_jpeg()[:600]
    job_id = stack.jobs.submit(cut_off)
    record = stack.jobs.wait_status(job_id, JobStatus.FAILED, log=stack.worker.log_tail())
    assert record.failure.code == "corrupt_image"
    assert "damaged" in record.failure.message or "incomplete" in record.failure.message
    assert record.attempts == 1
    assert metric_value(read(), "cxr_worker_retries_total") == retries_before
    assert not stack.storage.exists(result_key(job_id))

    not_an_image = stack.jobs.submit(b"Discharge letter: plain text, not an X-ray.")
    record = stack.jobs.wait_status(not_an_image, JobStatus.FAILED)
    assert record.failure.code == "not_an_image"


def test_a_task_delivered_twice_does_its_work_once(stack):
    read = stack.worker.metrics_text
    finished_before = metric_value(read(), "cxr_worker_jobs_total", outcome="already_finished")
    job_id = stack.jobs.create(xray_jpeg(seed=3))
    stack.jobs.send(job_id)
    stack.jobs.send(job_id)
    first = stack.jobs.wait_status(job_id, JobStatus.SUCCEEDED, log=stack.worker.log_tail())
    wait_for_metric(read, "cxr_worker_jobs_total", finished_before + 1,
                    outcome="already_finished")
    result_file = storage_file(stack.storage, result_key(job_id))
    written_at = result_file.stat().st_mtime_ns

    stack.jobs.send(job_id)  # and once more after it finished
    wait_for_metric(read, "cxr_worker_jobs_total", finished_before + 2,
                    outcome="already_finished")
    again = stack.jobs.store.get(job_id)
    assert again.attempts == first.attempts == 1
    assert again.finished_at == first.finished_at
    assert result_file.stat().st_mtime_ns == written_at


def test_metrics_count_outcomes_queue_time_and_inference(stack):
    job_id = stack.jobs.submit(xray_jpeg(seed=5))
    stack.jobs.wait_status(job_id, JobStatus.SUCCEEDED)
    text = stack.worker.metrics_text()
    assert metric_value(text, "cxr_worker_jobs_total", outcome="succeeded") >= 1
    assert metric_value(text, "cxr_worker_jobs_total", outcome="failed") >= 0
    assert metric_value(text, "cxr_worker_queue_seconds_count") >= 1
    assert metric_value(text, "cxr_worker_stage_seconds_count", stage="inference") >= 1
    assert metric_value(text, "cxr_worker_stage_seconds_count", stage="heatmap") >= 1
    assert "cxr_worker_dead_lettered_total" in text or "cxr_worker_dead_lettered" in text


def test_a_new_model_version_is_used_without_restarting_the_worker(stack):
    first = stack.jobs.submit(xray_jpeg(seed=7))
    assert stack.jobs.wait_status(first, JobStatus.SUCCEEDED).result.model.version == 1

    stack.model_server.publish(2, threshold=0.3)
    stack.model_server.wait_for_version(2, timeout=120)
    second = stack.jobs.submit(xray_jpeg(seed=7))
    result = stack.jobs.wait_status(second, JobStatus.SUCCEEDED,
                                    log=stack.worker.log_tail()).result
    assert result.model.version == 2
    assert result.threshold == pytest.approx(0.3)  # the new version's own operating point
    stored = json.loads(stack.storage.get(result_key(second)))
    assert stored["model"] == {"name": "cxr-pneumonia", "version": 2}
    assert np.isfinite(result.pneumonia_probability)
