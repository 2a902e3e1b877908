"""A real moto S3 server on a free loopback port, for tests of the boto3 storage path."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from tests.support.procs import ManagedProcess, free_port, wait_until

# Fake credentials: moto accepts any, boto3 refuses to sign without some.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    port: int
    process: ManagedProcess
    env: dict[str, str] = field(default_factory=lambda: dict(S3_TEST_ENV))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, name: str) -> str:
        """Create `name` (an existing bucket of ours is fine) and return it."""
        client = self.client()
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def service_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Environment for a service process that should store into `bucket` on this server."""
        return {**self.env, "CXR_STORAGE_BACKEND": "s3", "CXR_S3_BUCKET": bucket,
                "CXR_S3_PREFIX": prefix, "CXR_S3_ENDPOINT_URL": self.endpoint_url,
                "CXR_S3_REGION": "us-east-1"}


def _moto_argv(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def start_moto(log_dir: Path) -> S3Server:
    port = free_port()
    process = ManagedProcess(f"moto-{port}", _moto_argv(port), log_dir, env=S3_TEST_ENV)
    server = S3Server(port, process)

    def answers() -> bool:
        with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=2) as response:
            return response.status == 200

    wait_until(answers, 60, f"moto S3 server on {port}", process)
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server as a real process; the fake credentials are set in os.environ meanwhile."""
    saved = {name: os.environ.get(name) for name in S3_TEST_ENV}
    os.environ.update(S3_TEST_ENV)
    server = start_moto(tmp_path_factory.mktemp("moto-logs"))
    try:
        yield server
    finally:
        server.process.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
