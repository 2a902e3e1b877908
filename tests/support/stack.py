"""The whole path as separate processes: a TLS gateway and a Celery worker sharing its storage, in
front of a model server; and the client's upload-and-wait over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.gateway.uploads import sample_xray
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.model_server import ModelServer
from tests.support.scope_model import start_scope_model_server
from tests.support.worker import CeleryWorker, start_celery_worker


@dataclass
class Stack:
    gateway: GatewayProcess
    worker: CeleryWorker
    model_server: ModelServer


@contextmanager
def gateway_stack(work: Path, redis_url: str, model_server: ModelServer, *,
                  env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start a TLS gateway (no practical rate limit, `env` added) and a worker on its storage,
    both answered by `model_server`; both stopped on leaving, the model server left running."""
    gateway = start_gateway(work, redis_url, tls=True, env={
        "CXR_MODEL_SERVER_REST": model_server.rest_url,
        "CXR_RATE_LIMIT_PER_MINUTE": "100000", **(env or {})})
    try:
        worker = start_celery_worker(work / "worker", redis_url=redis_url,
                                     storage_root=gateway.storage_root,
                                     model_server_target=model_server.grpc_target)
    except BaseException:
        gateway.stop()
        raise
    try:
        yield Stack(gateway, worker, model_server)
    finally:
        worker.stop()
        gateway.stop()


@contextmanager
def scope_stack(work: Path, redis_url: str, *,
                env: dict[str, str] | None = None) -> Iterator[Stack]:
    """`gateway_stack` in front of its own model server serving the screening test model
    (tests/support/scope_model.py); all three stopped on leaving."""
    model_server = start_scope_model_server(work / "model")
    try:
        with gateway_stack(work, redis_url, model_server, env=env) as stack:
            yield stack
    finally:
        model_server.stop()


def finished(http, data: bytes, name: str = "film.png") -> dict:
    """Upload `data` as `name` on the client `http` and long-poll until the job has finished;
    its public view."""
    response = http.post("/v1/predictions", params={"wait": 60}, files={"file": (name, data)})
    assert response.status_code in (200, 202), response.text
    view = response.json()
    for _ in range(6):
        if view["status"] in ("succeeded", "failed"):
            return view
        view = http.get(f"/v1/predictions/{view['job_id']}", params={"wait": 30}).json()
    raise AssertionError(f"job did not finish: {view}")


def predicted_sample(http, label: str, index: int) -> dict:
    """Upload the sample film `label`/`index` and wait for its answer; the job must succeed."""
    path = sample_xray(label, index)
    view = finished(http, path.read_bytes(), path.name)
    assert view["status"] == "succeeded", view
    return view
