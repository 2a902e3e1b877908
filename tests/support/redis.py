"""A real redis-server on a free port for the tests (nothing kept on disk)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.support.procs import ManagedProcess, free_port, wait_until


@dataclass
class RedisServer:
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def restart(self, log_dir) -> None:
        """Stop and start again on the same port: every key is gone, as after a crash."""
        self.process.stop()
        self.process = start_redis(log_dir, self.port).process


def start_redis(log_dir, port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/system-deps.sh installs it)")
    port = port or free_port()
    proc = ManagedProcess(
        f"redis-{port}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        log_dir,
    )
    server = RedisServer(port, proc)
    wait_until(lambda: server.client().ping(), 20, f"redis-server on {port}", proc)
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-logs"))
    yield server
    server.process.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, flushed before each test that asks for it."""
    redis_server.client().flushall()
    yield redis_server.url
