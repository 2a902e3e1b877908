"""`GET /v1/predictions/{id}?wait=` answers from the job's "finished" notice (Redis pub/sub, one
pattern subscription per gateway process), and still from its fallback re-reads when a job
finishes without a notice or while the listener is lost.

A gateway whose fallback re-read is far longer than the wait can only answer "finished" before
the wait ends through the notice; one with a short re-read interval must also see a record that a
writer changed without publishing anything.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest
import redis

from shared.jobs.keys import finished_channel, redis_key
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.schemas import Failure, utc_now
from shared.storage import LocalStorage
from tests.gateway.uploads import sample_xray
from tests.support.gateway import GatewayProcess
from tests.support.procs import wait_until

WAIT_S = 20  # the request's ?wait=, under the gateway's 30 s cap


def _queued_job(gateway: GatewayProcess) -> str:
    """A real upload; no worker runs here, so the job stays queued until the test finishes it."""
    with gateway.client() as http:
        response = http.post("/v1/predictions",
                             files={"file": ("a.jpeg", sample_xray().read_bytes())})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _wait_in_background(gateway: GatewayProcess, job_id: str) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def wait() -> None:
        with gateway.client(timeout=WAIT_S + 30) as http:
            response = http.get(f"/v1/predictions/{job_id}", params={"wait": WAIT_S})
            answer.update(status_code=response.status_code, body=response.json())

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, answer


def _gauge(gateway: GatewayProcess, name: str) -> float:
    text = gateway.metrics_text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the gateway's metrics"
    return float(match[1])


def _finish_while_waited_on(gateway: GatewayProcess, job_id: str,
                            finish: Callable[[], None]) -> dict:
    """Start a waiting request, let it register its job, finish the job, and return the answer."""
    thread, answer = _wait_in_background(gateway, job_id)
    wait_until(lambda: _gauge(gateway, "cxr_gateway_waiting_requests") >= 1, 15,
               "the waiting request's registration")
    finish()
    thread.join(WAIT_S + 40)
    assert not thread.is_alive(), "the waiting request never answered"
    assert answer["status_code"] == 200, answer
    return answer["body"]


def _listening_gateway(gateway_factory, redis_url) -> tuple[GatewayProcess, redis.Redis, JobStore]:
    """A gateway that re-reads a waited-on job only every 60 s, its notices listener up: within
    a 20 s wait only a notice can bring the finished status."""
    gateway = gateway_factory(env={"CXR_WAIT_POLL_SECONDS": "60"})
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: _gauge(gateway, "cxr_gateway_job_notices_listening") == 1, 15,
               "the gateway's notices listener")
    return gateway, client, JobStore(client, LocalStorage(gateway.storage_root))


def test_a_waiting_request_answers_from_the_finished_notice(gateway_factory, redis_url):
    gateway, client, store = _listening_gateway(gateway_factory, redis_url)
    job_id = _queued_job(gateway)
    failure = Failure(code="test_failure", message="stopped by the test")
    assert client.pubsub_numpat() >= 1  # one pattern subscription for the process, none per job

    view = _finish_while_waited_on(gateway, job_id, lambda: store.mark_failed(job_id, failure))

    assert view["status"] == "failed", view
    assert view["failure"] == {"code": "test_failure", "message": "stopped by the test",
                               "reasons": None}
    assert client.pubsub_numsub(finished_channel(job_id))[0][1] == 0
    wait_until(lambda: _gauge(gateway, "cxr_gateway_waiting_requests") == 0, 10,
               "the request no longer waiting after its answer")


def test_many_waiting_requests_share_one_pubsub_connection(gateway_factory, redis_url):
    gateway, client, store = _listening_gateway(gateway_factory, redis_url)
    job_ids = [_queued_job(gateway) for _ in range(10)]
    waits = [_wait_in_background(gateway, job_id) for job_id in job_ids]
    wait_until(lambda: _gauge(gateway, "cxr_gateway_waiting_requests") == len(job_ids), 15,
               "every request waiting")
    # One pub/sub connection for the gateway process, not one per waiting request.
    assert len(client.client_list(_type="pubsub")) == 1
    for job_id in job_ids:
        store.mark_failed(job_id, Failure(code="test_failure", message=job_id))
    for (thread, answer), job_id in zip(waits, job_ids, strict=True):
        thread.join(WAIT_S + 40)
        assert answer["status_code"] == 200 and answer["body"]["failure"]["message"] == job_id


def test_the_listener_comes_back_after_its_connection_is_killed(gateway_factory, redis_url):
    gateway, client, store = _listening_gateway(gateway_factory, redis_url)
    job_id = _queued_job(gateway)
    thread, answer = _wait_in_background(gateway, job_id)
    wait_until(lambda: _gauge(gateway, "cxr_gateway_waiting_requests") >= 1, 15,
               "the waiting request's registration")
    assert client.client_kill_filter(_type="pubsub") >= 1  # as a Redis restart would
    wait_until(lambda: client.pubsub_numpat() >= 1, 15, "the listener subscribed again")
    # Only a notice can answer within the wait (re-reads every 60 s once listening again).
    store.mark_failed(job_id, Failure(code="test_failure", message="after the reconnect"))
    thread.join(WAIT_S + 40)
    assert answer["status_code"] == 200 and answer["body"]["status"] == "failed", answer


def test_a_job_finished_without_a_notice_is_seen_by_the_fallback_reads(gateway_factory,
                                                                        redis_url):
    gateway = gateway_factory(env={"CXR_WAIT_POLL_SECONDS": "0.5"})
    client = redis.Redis.from_url(redis_url)
    job_id = _queued_job(gateway)

    def finish_silently() -> None:  # as a writer that does not publish would
        record = JobRecord.model_validate_json(client.get(redis_key(job_id)))
        finished = record.model_copy(update={
            "status": JobStatus.FAILED, "finished_at": utc_now(),
            "failure": Failure(code="test_failure", message="no notice")})
        client.set(redis_key(job_id), finished.model_dump_json())

    view = _finish_while_waited_on(gateway, job_id, finish_silently)

    assert view["status"] == "failed", view
    assert view["failure"]["message"] == "no notice"


def test_finishing_a_job_publishes_its_status_once(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, LocalStorage(tmp_path))
    record = store.create(JobRecord(job_id="notice-1", client_id="alice", upload_key="uploads/x",
                                    size_bytes=1, content_type="image/jpeg"))
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(finished_channel(record.job_id))
    try:
        store.mark_running(record.job_id)
        store.mark_failed(record.job_id, Failure(code="a", message="first"))
        store.mark_failed(record.job_id, Failure(code="b", message="again"))  # a no-op
        store.set_extra(record.job_id, "note", 1)  # a finished job's extra: no second notice
        messages = []
        for _ in range(10):  # the subscribe confirmation reads as None too: keep listening a bit
            message = listener.get_message(timeout=0.2)
            if message is not None:
                messages.append(message["data"])
    finally:
        listener.close()
    assert messages == [b"failed"]
    assert client.pubsub_numsub(finished_channel(record.job_id))[0][1] == 0


@pytest.fixture
def gateway_factory(gateway_factory):  # noqa: F811 - the support fixture, with a looser rate limit
    def start(**kwargs):
        env = {"CXR_RATE_LIMIT_PER_MINUTE": "10000", **kwargs.pop("env", {})}
        return gateway_factory(env=env, **kwargs)

    return start
