"""Real processes for the PACS tests, shared per module: Redis, model server (session), the
inference worker, the DICOM SCP (`python -m services.pacs`), the report sender (`celery -A
services.pacs.celery_app worker -Q pacs`) and the hospital PACS (a pynetdicom SCP here)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.pacs.peers import MODALITY_AE, PACS_AE, ReceivingPacs
from tests.support.procs import ManagedProcess, free_port, port_open, python_argv, wait_until
from tests.support.redis import RedisServer, start_redis
from tests.support.worker import CeleryWorker, start_celery_worker


@dataclass
class PacsNode:
    """The service under test and everything around it."""

    redis: RedisServer
    storage_root: Path
    audit_log: Path
    scp: ManagedProcess
    scp_port: int
    sender: ManagedProcess
    hospital: ReceivingPacs
    worker: CeleryWorker | None

    @property
    def jobs(self) -> JobStore:
        return JobStore(redis.Redis.from_url(self.redis.url), LocalStorage(self.storage_root))

    def job(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def logs(self) -> str:
        return "\n".join(p.log_tail(4000) for p in (self.scp, self.sender))


def pacs_env(redis_url: str, storage_root: Path, audit_log: Path, **extra: str) -> dict[str, str]:
    return {"CXR_ENV": "test", "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
            "CXR_STORAGE_ROOT": str(storage_root), "CXR_AUDIT_LOG": str(audit_log),
            "CXR_PACS_REPORT_BACKOFF_S": "1", "CXR_PACS_REPORT_BACKOFF_MAX_S": "2",
            "CXR_PACS_NETWORK_TIMEOUT_S": "5", **extra}


def start_sender(log_dir: Path, name: str, env: dict[str, str],
                 pool: tuple[str, ...] = ("--pool", "solo")) -> ManagedProcess:
    argv = python_argv("-m", "celery", "-A", "services.pacs.celery_app", "worker", "-Q", "pacs",
                       *pool, "--loglevel", "INFO", "--without-gossip",
                       "--without-mingle", "--hostname", f"{name}@%h")
    sender = ManagedProcess(name, argv, log_dir, env=env)
    wait_until(lambda: "ready." in sender.log_tail(20000), 120, "pacs report sender", sender)
    return sender


def start_node(tmp: Path, *, model_server_target: str | None,
               destination_allows: list[str], env: dict[str, str] | None = None,
               sender_env: dict[str, str] | None = None,
               sender_pool: tuple[str, ...] = ("--pool", "solo")) -> PacsNode:
    """`env` is the SCP's and the sender's; `sender_env` the sender's only."""
    redis_server = start_redis(tmp / "redis")
    storage_root, audit_log = tmp / "storage", tmp / "audit.log"
    hospital = ReceivingPacs(free_port(), destination_allows)
    hospital.start()
    scp_port = free_port()
    env = pacs_env(redis_server.url, storage_root, audit_log,
                   CXR_PACS_PORT=str(scp_port), CXR_PACS_HOST="127.0.0.1",
                   CXR_PACS_ALLOWED_CALLING_AE_TITLES=f"{MODALITY_AE},OTHERMOD",
                   CXR_PACS_DESTINATION=f"{PACS_AE}@127.0.0.1:{hospital.port}", **(env or {}))
    scp = ManagedProcess("pacs-scp", python_argv("-m", "services.pacs"), tmp, env=env)
    wait_until(lambda: port_open(scp_port), 60, "pacs scp", scp)
    sender = start_sender(tmp, "pacs-sender", {**env, **(sender_env or {})}, sender_pool)
    worker = None
    if model_server_target is not None:
        worker = start_celery_worker(tmp, redis_url=redis_server.url, storage_root=storage_root,
                                     model_server_target=model_server_target)
    return PacsNode(redis_server, storage_root, audit_log, scp, scp_port, sender, hospital,
                    worker)


def stop_node(node: PacsNode) -> None:
    if node.worker is not None:
        node.worker.stop()
    node.sender.stop()
    node.scp.stop()
    node.hospital.stop()
    node.redis.process.stop()


@pytest.fixture(scope="module")
def pacs_node(tmp_path_factory, shared_model_server) -> Iterator[PacsNode]:
    """The whole chain, with a hospital PACS that accepts the service's AE title `CXR`."""
    node = start_node(tmp_path_factory.mktemp("pacs"),
                      model_server_target=shared_model_server.grpc_target,
                      destination_allows=["CXR"])
    yield node
    stop_node(node)
