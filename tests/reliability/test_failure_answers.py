"""Failure answers of a real gateway reveal nothing internal: no storage path, errno, exception
class, Python repr or Redis address in any 5xx, `/readyz` or 422 body; 503s carry Retry-After."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.reliability.corpus import upload
from tests.support.gateway import start_gateway
from tests.support.procs import free_port

INTERNALS = re.compile(r"Errno|\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|/tmp/|/var/|"
                       r"\b127\.0\.0\.1\b|redis://|<class |object at 0x|\.py\b")


def jpeg() -> bytes:
    """A real film (a flat image would be refused by the scope screening before storage)."""
    sample = sorted((Path(__file__).resolve().parents[2] / "data" / "sample" / "NORMAL")
                    .glob("*.jpeg"))[0]
    return sample.read_bytes()


def assert_nothing_internal(response: httpx.Response, *secrets: str) -> None:
    text = response.text
    assert not INTERNALS.search(text), text
    for secret in secrets:
        assert secret not in text, (secret, text)


def test_storage_unwritable_is_a_plain_503_with_retry_after(tmp_path_factory, redis_server):
    work = tmp_path_factory.mktemp("unwritable")
    root = work / "storage"
    root.mkdir()
    (root / "uploads").write_bytes(b"a file where the folder should be")  # mkdir: [Errno 17]
    (root / "health").write_bytes(b"the same for the readiness probe")
    gateway = start_gateway(work, redis_server.url)
    try:
        with gateway.client("alice") as http:
            spec = upload(jpeg())
            refused = http.post("/v1/predictions", content=spec.content, headers=spec.headers)
            ready = http.get("/readyz")
        log = gateway.process.log_tail(10**6)
    finally:
        gateway.stop()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "storage_unavailable"
    assert int(refused.headers["retry-after"]) > 0
    assert_nothing_internal(refused, str(root))
    assert ready.status_code == 503 and ready.json()["checks"]["storage"] == "failed"
    assert int(ready.headers["retry-after"]) > 0
    assert_nothing_internal(ready, str(root))
    assert "Errno 17" in log  # the operator still finds the cause


def test_readyz_with_redis_down_names_no_address(tmp_path_factory):
    port = free_port()
    gateway = start_gateway(tmp_path_factory.mktemp("no-redis"), f"redis://127.0.0.1:{port}/0")
    try:
        with gateway.client(None) as http:
            ready = http.get("/readyz")
    finally:
        gateway.stop()
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "failed"
    assert_nothing_internal(ready, str(port))


def test_422_details_carry_no_python_text(tmp_path_factory, redis_server):
    gateway = start_gateway(tmp_path_factory.mktemp("422"), redis_server.url)
    boundary = "cxr-422"
    no_filename = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
                   f"just text\r\n--{boundary}--\r\n").encode()
    truncated = jpeg()[:400]
    try:
        with gateway.client("alice") as http:
            field = http.post("/v1/predictions", content=no_filename, headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
            spec = upload(truncated)
            damaged = http.post("/v1/predictions", content=spec.content, headers=spec.headers)
    finally:
        gateway.stop()
    assert field.status_code == 422 and field.json()["code"] == "invalid_request"
    assert_nothing_internal(field)
    assert damaged.status_code == 422 and damaged.json()["code"] == "corrupt_image"
    assert_nothing_internal(damaged)
    assert "not processed" not in damaged.text and "truncated" not in damaged.text
