"""A request body that trickles in is cut off: 408 and the connection closed, against a real
gateway process (`python -m services.gateway`) with `CXR_BODY_READ_TIMEOUT_SECONDS=2`.

Before the limit a chunked upload sending one byte a second was held open for as long as the
client kept sending (uvicorn has no body timeout). Now the whole body must arrive within the
timeout, counted from the request's headers; normal uploads go on being accepted while trickling
clients hold connections, and a `?wait=` request whose body is complete may wait longer than the
body timeout.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.gateway.uploads import sample_xray
from tests.reliability.corpus import MULTIPART_TYPE, Part, multipart, upload
from tests.support.gateway import GatewayProcess, start_gateway

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 2.0
TRICKLERS = 10


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("slow-body"), redis_server.url,
                            env={"CXR_BODY_READ_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
                                 "CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    yield process
    process.stop()


def film() -> bytes:
    return sample_xray("NORMAL").read_bytes()


def request_head(gateway: GatewayProcess, *, chunked: bool, length: int = 0) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (f"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
            f"Authorization: Bearer {gateway.keys['alice']}\r\n"
            f"Content-Type: {MULTIPART_TYPE}\r\n{framing}\r\n\r\n").encode()


class Trickler:
    """A client sending its upload one byte every `interval_s`, never finishing; it records the
    answer, when it came, and whether the server closed the connection after it."""

    def __init__(self, gateway: GatewayProcess, *, chunked: bool, interval_s: float = 0.5) -> None:
        body = multipart(Part("file", film()))
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
        self.sock.sendall(request_head(gateway, chunked=chunked, length=len(body)))
        self.body, self.chunked, self.interval_s = body, chunked, interval_s
        self.answer = b""
        self.closed = False
        self.answered_after_s: float | None = None
        self.bytes_sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Trickler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        self.sock.settimeout(self.interval_s)
        for index in range(int(30 / self.interval_s)):  # far past the body timeout
            byte = self.body[index:index + 1]
            try:
                self.sock.sendall(b"1\r\n" + byte + b"\r\n" if self.chunked else byte)
                self.bytes_sent += 1
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if data:
                self.answered_after_s = self.answered_after_s or time.monotonic() - self.started
                self.answer += data
            else:
                break
        self.sock.settimeout(10)
        try:  # the rest of the answer, then the server's close
            while data := self.sock.recv(65536):
                self.answer += data
            self.closed = True
        except OSError:
            self.closed = self.answer != b""

    def join(self) -> None:
        self._thread.join(60)
        self.sock.close()

    @property
    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else 0

    def problem(self) -> dict:
        return json.loads(self.answer.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_trickling_body_gets_408_and_its_connection_is_closed(gateway, chunked, fault_report):
    trickler = Trickler(gateway, chunked=chunked).start()
    trickler.join()
    assert trickler.status == 408, trickler.answer[:300]
    assert trickler.problem()["code"] == "request_body_timeout"
    assert b"connection: close" in trickler.answer.lower()
    assert trickler.closed, "the gateway kept the connection open after the 408"
    assert trickler.answered_after_s is not None
    assert BODY_TIMEOUT_S - 0.5 <= trickler.answered_after_s < BODY_TIMEOUT_S + 3
    fault_report({"scenario": f"trickling body ({'chunked' if chunked else 'content-length'})",
                  "status": trickler.status, "answered_after_s":
                  round(trickler.answered_after_s, 1), "bytes_sent": trickler.bytes_sent})


def test_normal_uploads_are_served_while_clients_trickle(gateway, fault_report):
    jobs_before = len(list((gateway.storage_root / "jobs").glob("*.json")))
    tricklers = [Trickler(gateway, chunked=index % 2 == 0).start() for index in range(TRICKLERS)]
    spec = upload(film())
    statuses = []
    with gateway.client("bob") as http:
        while any(t._thread.is_alive() for t in tricklers):
            statuses.append(http.post(spec.path, content=spec.content,
                                      headers=spec.headers).status_code)
            assert http.get("/healthz").status_code == 200
            time.sleep(0.2)
    for trickler in tricklers:
        trickler.join()
    assert [t.status for t in tricklers] == [408] * TRICKLERS
    assert all(t.closed for t in tricklers)
    assert statuses and set(statuses) == {202}, statuses
    # Nothing the tricklers sent was stored: only bob's uploads made jobs.
    jobs = list((gateway.storage_root / "jobs").glob("*.json"))
    assert len(jobs) - jobs_before == len(statuses)
    fault_report({"scenario": "trickling bodies beside normal uploads", "tricklers": TRICKLERS,
                  "408": TRICKLERS, "5xx": 0, "normal_accepted": len(statuses)})


def test_a_slow_body_within_the_timeout_and_a_long_wait_are_not_cut(gateway):
    body = multipart(Part("file", film()))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(request_head(gateway, chunked=False, length=len(body)).replace(
            b"/v1/predictions", b"/v1/predictions?wait=4"))
        third = len(body) // 3 + 1
        for start in range(0, len(body), third):  # in three pieces over about a second
            sock.sendall(body[start:start + third])
            time.sleep(0.4)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        waited_s = time.monotonic() - started
    # No worker runs: the job stays queued, and the wait (longer than the body timeout) runs out.
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    assert waited_s > BODY_TIMEOUT_S
