"""A real Celery worker, Redis and model server: answered films are recorded per site for the
drift check (no job id kept), counted by source, format, bit depth and size, and `cxr.drift_check`
sent to the queue sets the drift gauges in the worker's /metrics."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.trainer.artifact.drift_reference import compute_reference, write_reference
from shared.drift import FILM_BYTES, films_key
from shared.imaging import decode_xray, to_model_input
from shared.jobs.queue import DRIFT_CHECK_TASK, INFERENCE_QUEUE
from shared.jobs.records import JobRecord, JobStatus
from tests.support.model_server import start_model_server
from tests.worker.jobs import (
    WorkerStack,
    metric_value,
    wait_for_metric,
    worker_stack,
    xray_jpeg,
)

pytestmark = pytest.mark.slow

FILMS_PER_SITE = 20
REPO_ROOT = Path(__file__).resolve().parents[2]


def inverted_jpeg(seed: int) -> bytes:
    """The same kind of film with its grey levels inverted: a stream the model never saw."""
    pixels = 255 - np.asarray(Image.open(io.BytesIO(xray_jpeg(seed=seed))))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[WorkerStack]:
    root = tmp_path_factory.mktemp("drift-worker")
    server = start_model_server(root / "serving")
    try:
        # Version 1's reference, from films like the steady site's, as the export would write it.
        version_dir = server.base_path / "cxr-pneumonia" / "1"
        images = np.stack([to_model_input(decode_xray(xray_jpeg(seed=seed)).pixels)
                           for seed in range(40)])
        write_reference(version_dir, compute_reference(version_dir, images, {"films": "fixture"}))
        with worker_stack(root, redis_server.url, server, env={
                "CXR_MODEL_BASE_PATH": str(server.base_path), "CXR_DRIFT_MIN_FILMS": "15",
                # 20 films against 40: KS noise alone reaches about 0.4; a real shift is near 1.
                "CXR_DRIFT_KS_THRESHOLD": "0.6"}) as started:
            started.redis.flushall()
            yield started
    finally:
        server.stop()


def submit(stack: WorkerStack, data: bytes, site: str) -> str:
    job_id = uuid.uuid4().hex
    upload_key = f"uploads/{job_id}"
    stack.storage.put(upload_key, data)
    stack.jobs.store.create(JobRecord(job_id=job_id, client_id="tests", upload_key=upload_key,
                                      size_bytes=len(data), site=site))
    stack.jobs.send(job_id)
    return job_id


def test_answered_films_are_recorded_counted_and_checked(stack):
    sent = [submit(stack, xray_jpeg(seed=100 + i), "steady") for i in range(FILMS_PER_SITE)]
    sent += [submit(stack, inverted_jpeg(seed=200 + i), "inverted")
             for i in range(FILMS_PER_SITE)]
    for job_id in sent:
        stack.jobs.wait_status(job_id, JobStatus.SUCCEEDED, log=stack.worker.log_tail())

    for site in ("steady", "inverted"):
        members = stack.redis.zrange(films_key(site), 0, -1)
        assert len(members) == FILMS_PER_SITE
        assert all(len(m) == FILM_BYTES for m in members)
        assert not any(job_id.encode() in m for m in members for job_id in sent)

    text = stack.worker.metrics_text()
    assert metric_value(text, "cxr_worker_input_films_total", site="steady", source="upload",
                        format="jpeg", bit_depth="8") == FILMS_PER_SITE
    assert metric_value(text, "cxr_worker_input_side_pixels_count", site="inverted",
                        side="height") == FILMS_PER_SITE
    assert metric_value(text, "cxr_worker_input_side_pixels_sum", site="steady",
                        side="width") == 400 * FILMS_PER_SITE

    stack.jobs.celery.send_task(DRIFT_CHECK_TASK, queue=INFERENCE_QUEUE)
    read = stack.worker.metrics_text
    wait_for_metric(read, "cxr_drift_films", FILMS_PER_SITE, timeout=60, site="inverted")
    wait_for_metric(read, "cxr_drift_films", FILMS_PER_SITE, timeout=60, site="steady")
    text = read()
    assert metric_value(text, "cxr_drift_alert", site="inverted") == 1
    assert metric_value(text, "cxr_drift_alert", site="steady") == 0
    assert metric_value(text, "cxr_drift_ks", site="inverted", statistic="mean_intensity") > 0.9
    assert metric_value(text, "cxr_drift_last_check_timestamp_seconds", site="steady") > 0
    log = stack.worker.log_tail(20000)
    assert "drift check site=inverted version=1 films=20" in log and "state=ALERT" in log

    # Every metric the drift alert rules read is one the worker exports.
    rules = yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    (group,) = [g for g in rules["groups"] if g["name"] == "cxr-drift"]
    read_by_rules = {name for rule in group["rules"]
                     for name in re.findall(r"\bcxr_[a-z_]+\b", rule["expr"])}
    exported = {s.name for family in text_string_to_metric_families(text)
                for s in family.samples}
    assert read_by_rules and read_by_rules <= exported, read_by_rules - exported
