"""The thinnest service of the project's shape, for `bench.shape_floor`: never a service to deploy.

HTTPS FastAPI upload -> one Celery task on Redis (the project's broker settings: JSON, late acks,
prefetch 1, a prefork pool of two processes per core) -> the task decodes the image with
`shared.imaging`, asks the model server for the prediction and its Grad-CAM over gRPC with the
worker's own client -> a reply on a Redis list that the waiting request pops. Nothing else: no
authentication, no validating decode in the gateway, no job record, no stored upload, result or
heatmap, no lock, no retries. Whatever the real pipeline does costs at least this much.

    celery -A bench.floor_app worker -Q floor          # the worker (FLOOR_REDIS_URL, FLOOR_GRPC)
    python -m bench.floor_app --port 8443 --certfile C --keyfile K   # the gateway
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from typing import Annotated

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_shutdown
from fastapi import FastAPI, File, HTTPException, UploadFile

from shared.celery_config import reliable_queue_config

QUEUE = "floor"
TASK_NAME = "floor.predict"
REPLY_TTL_S = 60
WAIT_S = 30
MODEL_NAME = "cxr-pneumonia"

REDIS_URL = os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/1")
GRPC_TARGET = os.environ.get("FLOOR_GRPC", "127.0.0.1:8500")

app = Celery("cxr-floor")
app.conf.update(
    reliable_queue_config(redis_url=REDIS_URL, queue=QUEUE, task_name=TASK_NAME),
    worker_concurrency=2 * len(os.sched_getaffinity(0)),
    task_send_sent_event=False,
)

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()
# With the threads pool, FLOOR_BATCH_MAX > 1 lets one caller thread send the images that
# other threads are waiting with as one Predict (each waits at most FLOOR_BATCH_WAIT_MS for more).
BATCH_MAX = int(os.environ.get("FLOOR_BATCH_MAX", "1"))
BATCH_WAIT_S = float(os.environ.get("FLOOR_BATCH_WAIT_MS", "2")) / 1000
BATCH_SIZES_KEY = "floor:batch-sizes"  # how many Predicts had each size, written at shutdown
_batch_sizes: Counter[int] = Counter()


def _row(outputs: dict, row: int) -> dict:
    """One image's outputs out of a batch's (a scalar output is the same for every image)."""
    import numpy as np

    return {key: value[row] if np.ndim(value) else value for key, value in outputs.items()}


class Batcher:
    """Images of concurrent tasks in one `predict_with_heatmap` call; each gets its own row."""

    def __init__(self, call, max_size: int, wait_s: float) -> None:
        self.call, self.max_size, self.wait_s = call, max_size, wait_s
        self.pending: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="floor-batcher").start()

    def __call__(self, image):
        done: Future = Future()
        self.pending.put((image, done))
        return done.result()

    def _loop(self) -> None:
        import numpy as np

        while True:
            items = [self.pending.get()]
            deadline = time.monotonic() + self.wait_s
            while len(items) < self.max_size:
                try:
                    items.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                answer = self.call(np.concatenate([image for image, _ in items]))
            except Exception as exc:  # noqa: BLE001 - every waiting task gets the error
                for _, done in items:
                    done.set_exception(exc)
                continue
            _batch_sizes[len(items)] += 1
            for row, (_, done) in enumerate(items):
                done.set_result(_row(answer.outputs, row))


@worker_init.connect
def _import_before_fork(**_kwargs) -> None:
    """TensorFlow imported once in the worker's main process, as the project's worker does."""
    import services.worker.serving_client  # noqa: F401


@worker_process_init.connect
def _fresh_clients(**_kwargs) -> None:
    """gRPC is not fork-safe: every pool process makes its own clients."""
    _clients.clear()


@worker_shutdown.connect
def _report_batch_sizes(**_kwargs) -> None:
    """The batch sizes counted in this process, for the bench to read once the worker is gone."""
    if _batch_sizes:
        client = _redis()
        for size, count in _batch_sizes.items():
            client.hincrby(BATCH_SIZES_KEY, str(size), count)


def _client(name: str, make):
    with _clients_lock:
        if name not in _clients:
            _clients[name] = make()
        return _clients[name]


def _serving():
    """This process's model call: image batch of one -> that image's outputs."""

    def make():
        from services.worker.serving_client import ServingClient

        client = ServingClient(GRPC_TARGET, MODEL_NAME, timeout_s=WAIT_S)
        if BATCH_MAX > 1:
            return Batcher(client.predict_with_heatmap, BATCH_MAX, BATCH_WAIT_S)
        return lambda batch: _row(client.predict_with_heatmap(batch).outputs, 0)

    return _client("serving", make)


def _redis():
    import redis

    return _client("redis", lambda: redis.Redis.from_url(REDIS_URL))


@app.task(name=TASK_NAME)
def predict(reply_key: str, image_b64: str) -> None:
    import numpy as np

    from shared.imaging import decode_xray, to_model_input

    pixels = decode_xray(base64.b64decode(image_b64)).pixels
    outputs = _serving()(to_model_input(pixels)[np.newaxis])
    probability = float(outputs["pneumonia_probability"])
    reply = _redis()
    reply.lpush(reply_key, json.dumps({"probability": probability}))
    reply.expire(reply_key, REPLY_TTL_S)


def create_app():
    import redis.asyncio

    api = FastAPI()
    replies = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=WAIT_S + 10)

    @api.post("/predict")
    async def upload(file: Annotated[UploadFile, File()]) -> dict:
        reply_key = f"floor:reply:{uuid.uuid4().hex}"
        image_b64 = base64.b64encode(await file.read()).decode()
        app.send_task(TASK_NAME, args=[reply_key, image_b64], queue=QUEUE)
        popped = await replies.blpop([reply_key], timeout=WAIT_S)
        if popped is None:
            raise HTTPException(504, "no answer in time")
        return json.loads(popped[1])

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return api


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, ssl_certfile=args.certfile,
                ssl_keyfile=args.keyfile, log_level="warning")


if __name__ == "__main__":
    main()
