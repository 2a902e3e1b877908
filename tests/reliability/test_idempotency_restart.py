"""An Idempotency-Key is remembered across a Redis restart, against a real gateway process on a
Redis of its own (nothing kept on disk, as in the fault scenarios).

Before, the claim lived only in Redis: the same key and bytes after Redis restarted created a
second job. Now the claim is also kept in storage beside the job (`idempotency/`), so a repeat
after Redis lost its data gets the first job, other bytes under the key get 409, and concurrent
repeats agree on one job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.uploads import sample_xray
from tests.reliability.corpus import upload
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.redis import RedisServer, start_redis

pytestmark = pytest.mark.slow

KEYS = 5
REPEATS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[GatewayProcess, RedisServer]]:
    root = tmp_path_factory.mktemp("idempotency-restart")
    redis_server = start_redis(root / "redis")
    gateway = start_gateway(root, redis_server.url,
                            env={"CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    yield gateway, redis_server
    gateway.stop()
    redis_server.process.stop()


def film(index: int) -> bytes:
    return sample_xray("NORMAL", index).read_bytes()


def post(gateway: GatewayProcess, data: bytes, key: str, client: str = "alice"):
    spec = upload(data, headers={"Idempotency-Key": key})
    with gateway.client(client) as http:
        return http.post(spec.path, content=spec.content, headers=spec.headers)


def job_records(gateway: GatewayProcess) -> list[dict]:
    return [json.loads(path.read_text())
            for path in sorted((gateway.storage_root / "jobs").glob("*.json"))]


@pytest.mark.parametrize("loss", ["restart", "flushall"])
def test_the_same_key_and_bytes_after_redis_lost_its_data_make_no_second_job(stack, loss,
                                                                             fault_report):
    gateway, redis_server = stack
    keys = [f"{loss}-key-{index}" for index in range(KEYS)]
    first = {}
    for index, key in enumerate(keys):
        response = post(gateway, film(index), key)
        assert response.status_code == 202, response.text
        first[key] = response.json()["job_id"]
    jobs_before = len(job_records(gateway))

    if loss == "restart":
        redis_server.restart(gateway.storage_root.parent / "redis")
    else:
        redis_server.client().flushall()
    assert redis_server.client().dbsize() == 0

    # Each key sent again REPEATS times at once, with its own bytes; and once with other bytes.
    with ThreadPoolExecutor(max_workers=KEYS * REPEATS) as pool:
        repeats = list(pool.map(lambda job: (job[0], post(gateway, film(job[1]), job[0])),
                                [(key, index) for index, key in enumerate(keys)
                                 for _ in range(REPEATS)]))
    statuses = [response.status_code for _, response in repeats]
    assert set(statuses) <= {200, 202}, [r.text for _, r in repeats if r.status_code >= 300]
    for key, response in repeats:
        assert response.json()["job_id"] == first[key]
    other = post(gateway, film(KEYS), keys[0])
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    # The claim is the client's: another client's same key is a new job of its own.
    bob = post(gateway, film(0), keys[0], client="bob")
    assert bob.status_code == 202 and bob.json()["job_id"] != first[keys[0]]

    duplicated = len(job_records(gateway)) - jobs_before - 1  # bob's job is the one new job
    assert duplicated == 0
    fault_report({"scenario": f"idempotency after Redis {loss}", "keys": KEYS,
                  "repeats": KEYS * REPEATS, "same_job": KEYS * REPEATS,
                  "duplicated": duplicated, "5xx": sum(s >= 500 for s in statuses)})


def test_the_durable_claim_names_no_client_or_key(stack):
    """What storage keeps: the job id, the upload's digest and the expiry; no key or client."""
    gateway, _ = stack
    assert post(gateway, film(0), "secret-looking-key-123").status_code in (200, 202)
    claims = list((gateway.storage_root / "idempotency").glob("*.json"))
    assert claims
    for path in claims:
        assert set(json.loads(path.read_text())) == {"job_id", "sha256", "expires_at"}
        assert "secret-looking-key-123" not in path.name and "alice" not in path.name
