"""A local HTTPS webhook receiver for the tests: records each POST, answers scripted statuses.

Its certificate is self-signed for 127.0.0.1 (made like the gateway's development certificate)
and is its own trust anchor: point `CXR_WEBHOOK_CA_BUNDLE` at `ca_file`. `start()` and `stop()`
may be called more than once on the same port, so a test can take the receiver down and bring it
back up.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.gateway.tls import ensure_self_signed
from tests.support.procs import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.time() when it arrived


@dataclass
class WebhookReceiver:
    cert_dir: Path
    port: int = field(default_factory=free_port)
    statuses: list[int] = field(default_factory=list)  # answered in turn; then 200
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.cert_file, self.key_file = ensure_self_signed(self.cert_dir)

    @property
    def ca_file(self) -> Path:
        return self.cert_file

    def url(self, path: str = "/hooks/cxr") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.append(Received(self.path, dict(self.headers.items()),
                                                      body, status, time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"the receiver got {len(self.received)} of {count} webhooks "
                             f"in {timeout} s")


@pytest.fixture
def webhook_receiver(tmp_path) -> Iterator[WebhookReceiver]:
    """A receiver, not started yet (call `start()`; a test may first let deliveries fail)."""
    receiver = WebhookReceiver(tmp_path / "webhook-tls")
    yield receiver
    receiver.stop()
