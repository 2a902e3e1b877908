"""Helpers for worker tests: make uploads and job records, send tasks, wait, read metrics."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from celery import Celery
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shared.jobs.queue import enqueue_predict
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.support.model_server import ModelServer
from tests.support.worker import CeleryWorker, start_celery_worker


def xray_jpeg(height: int = 480, width: int = 400, seed: int = 0) -> bytes:
    """A chest-film-like gray JPEG: dark lungs in a brighter body, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    body = 170 - 60 * (((xx - width / 2) / (width / 2)) ** 2)
    lungs = 90 * (np.exp(-(((xx - 0.32 * width) / 50) ** 2 + ((yy - height / 2) / 120) ** 2))
                  + np.exp(-(((xx - 0.68 * width) / 50) ** 2 + ((yy - height / 2) / 120) ** 2)))
    pixels = np.clip(body - lungs + rng.normal(0, 8, (height, width)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class JobClient:
    """What the gateway does for a job, done directly: upload, record, task."""

    def __init__(self, store: JobStore, storage: LocalStorage, redis_url: str) -> None:
        self.store = store
        self.storage = storage
        self.celery = Celery("worker-tests", broker=redis_url)
        self.celery.conf.update(task_serializer="json", accept_content=["json"])

    def create(self, data: bytes, job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex
        upload_key = f"uploads/{job_id}"
        self.storage.put(upload_key, data)
        self.store.create(JobRecord(job_id=job_id, client_id="tests", upload_key=upload_key,
                                    size_bytes=len(data)))
        return job_id

    def send(self, job_id: str) -> None:
        enqueue_predict(self.celery, job_id)

    def submit(self, data: bytes) -> str:
        job_id = self.create(data)
        self.send(job_id)
        return job_id

    def wait_finished(self, job_id: str, timeout: float = 120.0, log: str = "") -> JobRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.store.get(job_id)
            if record is not None and record.status.finished:
                return record
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s: "
                           f"{self.store.get(job_id)}\n{log}")

    def wait_status(self, job_id: str, status: JobStatus, timeout: float = 120.0,
                    log: str = "") -> JobRecord:
        record = self.wait_finished(job_id, timeout, log)
        assert record.status == status, f"{record}\n{log}"
        return record

    def close(self) -> None:
        self.celery.close()


@dataclass
class WorkerStack:
    jobs: JobClient
    storage: LocalStorage
    model_server: ModelServer
    worker: CeleryWorker
    redis: redis.Redis


@contextmanager
def worker_stack(root: Path, redis_url: str, model_server: ModelServer,
                 env: dict[str, str] | None = None) -> Iterator[WorkerStack]:
    """A Celery worker (`env` added) on storage under `root`, answered by `model_server`, and a
    job client; the worker stopped on leaving, the model server left running."""
    storage = LocalStorage(root / "storage")
    worker = start_celery_worker(root / "logs", redis_url=redis_url, storage_root=storage.root,
                                 model_server_target=model_server.grpc_target, env=env)
    client = redis.Redis.from_url(redis_url)
    jobs = JobClient(JobStore(client, storage), storage, redis_url)
    try:
        yield WorkerStack(jobs, storage, model_server, worker, client)
    finally:
        jobs.close()
        worker.stop()
        client.close()


def storage_file(storage: LocalStorage, key: str) -> Path:
    return Path(storage.root) / key


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of sample `name` with `labels` in Prometheus text output (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for_metric(read_text, name: str, at_least: float, timeout: float = 60.0,
                    **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric_value(read_text(), name, **labels)
        if value >= at_least:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{name}{labels} stayed at {value} (< {at_least}) for {timeout}s")
