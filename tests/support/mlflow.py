"""A real `mlflow server` process on a free port: SQLite, PostgreSQL or S3 (moto) behind it.

`mlflow_server` (session-scoped, SQLite backend, artifacts proxied to a local folder) is shared by
the tests that each make their own experiment and registered-model names. `mlflow_server_postgres`
creates a fresh database in the machine's PostgreSQL and drops it afterwards;
`mlflow_server_s3` stores artifacts in a bucket of the moto S3 server.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ManagedProcess, free_port, wait_until

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/{database}"
# SQLAlchemy 2.1 defaults to psycopg 3; the lock file ships psycopg2.
MLFLOW_POSTGRES_URI = "postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
# Importing MLflow's server app takes tens of seconds on a busy 2-core machine.
START_TIMEOUT_S = 240


@dataclass
class MlflowServer:
    port: int
    process: ManagedProcess
    backend_uri: str
    artifacts_destination: str
    env: dict[str, str] = field(default_factory=dict)
    bucket: str | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return httpx.get(f"{self.tracking_uri}/health", timeout=2).text.strip() == "OK"

    def stop(self) -> None:
        self.process.stop()


def start_mlflow(log_dir: Path, backend_uri: str, artifacts_destination: str,
                 env: dict[str, str] | None = None) -> MlflowServer:
    """Start `mlflow server` and wait for `/health`; raise with its log when it cannot start."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    argv = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    proc = ManagedProcess(f"mlflow-{port}", argv, log_dir, env=env)
    server = MlflowServer(port, proc, backend_uri, artifacts_destination, dict(env or {}))
    try:
        wait_until(server.healthy, START_TIMEOUT_S, f"mlflow server on {port}", proc)
    except BaseException:
        proc.stop()
        raise
    return server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """MLflow with a SQLite backend and artifacts in a local folder, for the whole session."""
    root = tmp_path_factory.mktemp("mlflow")
    server = start_mlflow(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    yield server
    server.stop()


@pytest.fixture
def mlflow_server_postgres(tmp_path) -> Iterator[MlflowServer]:
    """MLflow with a fresh PostgreSQL database as its backend store (dropped afterwards)."""
    import psycopg2

    database = f"mlflow_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(POSTGRES_DSN.format(database="postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        server = start_mlflow(tmp_path, MLFLOW_POSTGRES_URI.format(database=database),
                              str(tmp_path / "artifacts"))
        try:
            yield server
        finally:
            server.stop()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def mlflow_server_s3(tmp_path, s3_server, monkeypatch) -> Iterator[MlflowServer]:
    """MLflow whose proxied artifacts live in a bucket of the moto S3 server.

    The S3 endpoint and credentials are also set in this process's environment, so a test can
    check the objects with boto3.
    """
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    env = {**s3_server.env, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = start_mlflow(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}",
                          f"s3://{bucket}/artifacts", env=env)
    server.bucket = bucket
    yield server
    server.stop()
