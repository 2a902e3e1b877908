"""The gateway as a real uvicorn process on a free port (`python -m services.gateway`)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ManagedProcess, free_port, python_argv, wait_until

# Several clients, so tests can check that one never sees the other's jobs.
TEST_KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210",
             "carol": "carol-key-5555555555"}


@dataclass
class GatewayProcess:
    process: ManagedProcess
    port: int
    keys: dict[str, str]
    storage_root: Path
    audit_log: Path
    tls_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The self-signed certificate the gateway made, usable as its own trust anchor."""
        return self.tls_dir / "localhost.crt" if self.tls_dir else None

    @property
    def metrics_url(self) -> str:
        """The internal metrics endpoint (plain HTTP, its own port)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self) -> str:
        response = httpx.get(self.metrics_url, timeout=10)
        response.raise_for_status()
        return response.text

    def verify(self) -> ssl.SSLContext | bool:
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, as_client: str | None = "alice", **kwargs) -> httpx.Client:
        """An HTTP client; with `as_client`, it sends that client's API key."""
        headers = dict(kwargs.pop("headers", {}))
        if as_client is not None:
            headers["Authorization"] = f"Bearer {self.keys[as_client]}"
        return httpx.Client(base_url=self.url, headers=headers, verify=self.verify(),
                            timeout=kwargs.pop("timeout", 30), **kwargs)

    def stop(self) -> None:
        self.process.stop()


def start_gateway(work_dir: Path, redis_url: str, *, env: dict[str, str] | None = None,
                  tls: bool = False, keys: dict[str, str] | None = None) -> GatewayProcess:
    """Start `python -m services.gateway` and wait until /healthz answers."""
    keys = dict(TEST_KEYS if keys is None else keys)
    port = free_port()
    storage_root, audit_log = work_dir / "storage", work_dir / "audit.log"
    tls_dir = work_dir / "tls" if tls else None
    full_env = {
        "CXR_ENV": "test",
        "CXR_REDIS_URL": redis_url,
        "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(storage_root),
        "CXR_API_KEYS": ",".join(f"{client}:{key}" for client, key in keys.items()),
        "CXR_GATEWAY_HOST": "127.0.0.1",
        "CXR_GATEWAY_PORT": str(port),
        "CXR_GATEWAY_TLS": "true" if tls else "false",
        "CXR_TLS_DIR": str(tls_dir or work_dir / "tls-unused"),
        "CXR_AUDIT_LOG": str(audit_log),
        "CXR_DEMO_KEY_FILE": str(work_dir / "demo-api-key"),
        # Nothing listens here unless a test points these at a real server.
        "CXR_MODEL_SERVER_REST": f"http://127.0.0.1:{free_port()}",
        "CXR_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "CXR_UPSTREAM_TIMEOUT_SECONDS": "2",
        "CXR_GATEWAY_METRICS_PORT": str(free_port()),
        **(env or {}),
    }
    process = ManagedProcess(f"gateway-{port}", python_argv("-m", "services.gateway"), work_dir,
                             env=full_env)
    gateway = GatewayProcess(process, port, keys, storage_root, audit_log, tls_dir, full_env,
                             int(full_env["CXR_GATEWAY_METRICS_PORT"]))
    verify = gateway.verify  # the certificate exists only once the process made it

    def healthy() -> bool:
        return httpx.get(f"{gateway.url}/healthz", verify=verify(), timeout=2).status_code == 200

    try:
        wait_until(healthy, 60, f"gateway on {port}", process)
    except Exception:
        process.stop()
        raise
    return gateway


@pytest.fixture
def gateway_factory(tmp_path_factory, redis_url) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways with extra settings (`env=`, `tls=`, `keys=`); all stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(**kwargs) -> GatewayProcess:
        gateway = start_gateway(tmp_path_factory.mktemp("gateway"), redis_url, **kwargs)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory, redis_server) -> Iterator[GatewayProcess]:
    """One plain-HTTP gateway for a test module (starting one takes seconds), on the session's
    Redis, with no worker and no model server. Tests that need a clean Redis ask for `redis_url`
    too, which flushes it; storage persists across the module's tests."""
    gateway = start_gateway(tmp_path_factory.mktemp("gateway"), redis_server.url,
                            env=MODULE_GATEWAY_ENV)
    yield gateway
    gateway.stop()


@pytest.fixture
def fresh_module_gateway(module_gateway, redis_url) -> GatewayProcess:
    """The module's gateway on a flushed Redis: no jobs, no queued tasks, and fresh per-minute
    request counts (counted in the session's Redis by client name, so every gateway's tests with
    the same clients add to them)."""
    return module_gateway


MODULE_GATEWAY_ENV = {"CXR_MAX_UPLOAD_BYTES": "2000000", "CXR_RATE_LIMIT_PER_MINUTE": "20"}
