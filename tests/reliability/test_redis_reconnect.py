"""The worker's and the DICOM node's Redis clients survive the death of their Redis connections.

A pooled connection whose server went away without the client seeing it (a Redis failover, a
restart behind the same address) fails its next command, and redis-py's clients made by
`from_url` do not retry: the worker's command raised `ConnectionError` (a task retried or a job
failed for nothing), and the DICOM node answered the next C-STORE 0xA700 (out of resources),
making the modality resend. The gateway already retried; now every service's clients do
(`shared.redis_clients`): the command runs again on a fresh connection. A proxy between client
and Redis (`tests/support/tcp_proxy.py`) resets every connection opened before the fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from services.pacs.delivery import ReportDeps
from services.pacs.settings import PacsSettings
from services.worker.job import WorkerDeps
from services.worker.settings import WorkerSettings
from shared.dicom_intake.receive import instance_job_id
from shared.jobs.store import JobStore
from shared.redis_clients import redis_client
from shared.storage import LocalStorage
from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import MODALITY_AE, c_store
from tests.pacs.studies import chest_dx
from tests.support.procs import free_port
from tests.support.redis import RedisServer
from tests.support.tcp_proxy import DroppingProxy

SUCCESS = 0x0000


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[DroppingProxy]:
    started = DroppingProxy(redis_server.port)
    yield started
    started.close()


def worker_client(url: str, tmp_path) -> tuple[redis.Redis, Callable[[], None]]:
    deps = WorkerDeps.from_settings(WorkerSettings(
        redis_url=url, storage_root=str(tmp_path), model_server_grpc=f"127.0.0.1:{free_port()}"))
    return deps.redis, deps.close


def sender_client(url: str, tmp_path) -> tuple[redis.Redis, Callable[[], None]]:
    deps = ReportDeps.from_settings(PacsSettings(redis_url=url, storage_root=str(tmp_path)))
    return deps.redis, deps.redis.close


@pytest.mark.parametrize("make", [worker_client, sender_client], ids=["worker", "report-sender"])
def test_a_command_on_a_dead_connection_runs_again_on_a_fresh_one(proxy, tmp_path, make):
    client, close = make(proxy.url, tmp_path)
    plain = redis.Redis.from_url(proxy.url)  # how these clients were made before
    try:
        assert client.set("cxr:probe", "before") and plain.ping()
        proxy.drop_open_connections()
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # the failure the retry guards against
        assert client.get("cxr:probe") == b"before"
        assert proxy.resets == 2  # each client's old connection was reset once
    finally:
        close()
        plain.close()


def test_a_redis_that_stays_away_still_fails_the_command(tmp_path):
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        client.ping()  # after its retries: an outage is reported, not hidden
    client.close()


@pytest.fixture
def node(tmp_path, redis_server) -> Iterator[tuple[PacsNode, DroppingProxy]]:
    """The DICOM node (SCP and report sender) on the session's Redis, through the proxy."""
    redis_server.client().flushall()
    proxy = DroppingProxy(redis_server.port)
    started = start_node(tmp_path / "node", model_server_target=None, destination_allows=["CXR"],
                         env={"CXR_REDIS_URL": proxy.url})
    yield started, proxy
    stop_node(started)
    proxy.close()


@pytest.mark.slow
def test_the_dicom_node_stores_the_first_instance_after_its_connections_died(
        node, redis_server, fault_report):
    pacs, proxy = node
    jobs = JobStore(redis_server.client(), LocalStorage(pacs.storage_root))
    first = chest_dx()
    assert c_store(pacs.scp_port, first) == SUCCESS
    assert jobs.get(instance_job_id(first.SOPInstanceUID, MODALITY_AE, "c-store")) is not None
    proxy.drop_open_connections()
    film = chest_dx()
    assert c_store(pacs.scp_port, film) == SUCCESS  # was 0xA700: the dead connection failed
    assert jobs.get(instance_job_id(film.SOPInstanceUID, MODALITY_AE, "c-store")) is not None
    assert proxy.resets >= 1
    fault_report({"scenario": "c-store after its redis connections died", "sent": 2,
                  "success": 2, "out_of_resources": 0})
