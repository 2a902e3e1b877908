"""Run the whole service on local defaults in the background: `make up` and `make down`.

`up` starts, in order, Redis (the machine's when one answers, else its own redis-server), the MLflow
server and UI, the bundled model's registration and publication (first start only), the model
server, the inference worker and the job reconciler, the trainer worker and beat, the DICOM node
(C-STORE SCP, AE `CXR`) and its report sender, and the gateway; it returns once each answers.
Process ids go to `var/run/`, logs to `var/log/`. `down` stops what `up` started. The gateway, the
worker, the DICOM node and the report sender serve their Prometheus `/metrics` on loopback ports.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.jobs.queue import INFERENCE_QUEUE, REPORT_QUEUE, TRAINING_QUEUE
from shared.settings import SharedSettings

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


class StackSettings(BaseSettings):
    """What `make up` / `make down` read: where the local stack lives and its ports."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    stack_dir: Path = Field(default=ROOT / "var", description=(
        "Folder of the local stack's state, logs and pid files; another folder runs a second, "
        "separate stack."))
    gateway_port: int = Field(default=8443, description="The gateway's HTTPS port.")
    mlflow_port: int = Field(default=5000, description="The MLflow server and UI.")
    model_server_grpc_port: int = Field(default=8500, description="The model server's gRPC port.")
    model_server_rest_port: int = Field(default=8501, description="The model server's REST port.")
    redis_port: int = Field(default=6379, description=(
        "Redis; the machine's own is used when one answers there, else the stack starts one."))
    pacs_port: int = Field(default=11112, description="The DICOM node's C-STORE port (AE `CXR`).")
    pacs_destination: str = Field(default="DEMOPACS@127.0.0.1:11113", description=(
        "Where the local DICOM node sends its SR and heatmap reports (AET@host:port); "
        "`make demo` listens there while it runs."))
    gateway_metrics_port: int = Field(default=9102, ge=0, le=65535, description=(
        "The gateway's Prometheus endpoint (`/metrics`, loopback only); 0: none is served."))
    worker_metrics_port: int = Field(default=9100, description=(
        "The inference worker's Prometheus endpoint (`/metrics`, loopback only)."))
    pacs_metrics_port: int = Field(default=9103, description=(
        "The DICOM node's Prometheus endpoint (`/metrics`, loopback only)."))
    pacs_sender_metrics_port: int = Field(default=9104, description=(
        "The DICOM report sender's Prometheus endpoint (`/metrics`, loopback only)."))
    model_base_path: Path | None = Field(default=None, description=(
        "The serving model folder; default `<stack_dir>/serving`."))
    demo_api_key: SecretStr = Field(default=SecretStr(""), description=(
        "The API key `make demo` sends; empty: the demo key the gateway generated into "
        "`<stack_dir>/demo-api-key` (with no `CXR_API_KEYS` set)."))


SETTINGS = StackSettings()
VAR = SETTINGS.stack_dir
RUN_DIR = VAR / "run"
LOG_DIR = VAR / "log"

GATEWAY_PORT = SETTINGS.gateway_port
MLFLOW_PORT = SETTINGS.mlflow_port
GRPC_PORT = SETTINGS.model_server_grpc_port
REST_PORT = SETTINGS.model_server_rest_port
REDIS_PORT = SETTINGS.redis_port
PACS_PORT = SETTINGS.pacs_port
GATEWAY_METRICS_PORT = SETTINGS.gateway_metrics_port
WORKER_METRICS_PORT = SETTINGS.worker_metrics_port
PACS_METRICS_PORT = SETTINGS.pacs_metrics_port
PACS_SENDER_METRICS_PORT = SETTINGS.pacs_sender_metrics_port
# Celery's prefork pool processes write their metric samples here; each worker its own folder.
PROMETHEUS_DIR = VAR / "run" / "prometheus"
SERVING_BASE = SETTINGS.model_base_path or VAR / "serving"
# The local stack's re-identification key (Fernet), made on first start, readable by its owner
# only; the keys it encrypts live in REID_ROOT, apart from the job storage (docs/privacy.md).
REID_KEY_FILE = VAR / "reid-key"
REID_ROOT = VAR / "reidentification"


def reid_key() -> str:
    """The local stack's re-identification key, generated once."""
    if not REID_KEY_FILE.exists():
        from cryptography.fernet import Fernet

        REID_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(REID_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(Fernet.generate_key().decode())
    return REID_KEY_FILE.read_text().strip()


def local_data_dir() -> Path:
    """The retraining data set of the local stack: `CXR_DATA_DIR`'s default from the repository
    root when it is there, else the sample X-rays, so the trainer worker (which refuses to start
    without a data set) runs in any checkout."""
    configured = ROOT / str(SharedSettings.model_fields["data_dir"].default)
    return configured.resolve() if configured.is_dir() else ROOT / "data" / "sample"


def local_environment() -> dict[str, str]:
    """The settings every local process shares (each can still be overridden from outside)."""
    defaults = {
        "CXR_ENV": "development",
        "CXR_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(VAR / "storage"),
        "CXR_DATA_DIR": str(local_data_dir()),
        "CXR_MODEL_BASE_PATH": str(SERVING_BASE),
        "CXR_MODEL_SERVER_GRPC": f"127.0.0.1:{GRPC_PORT}",
        "CXR_MODEL_SERVER_REST": f"http://127.0.0.1:{REST_PORT}",
        "CXR_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}",
        "CXR_GATEWAY_PORT": str(GATEWAY_PORT),
        "CXR_PACS_HOST": "127.0.0.1",
        "CXR_PACS_PORT": str(PACS_PORT),
        "CXR_PACS_DESTINATION": SETTINGS.pacs_destination,
        # The gateway's generated demo client (no CXR_API_KEYS): its STOW-RS results reach the
        # demo PACS too. Listing clients is the deployment's choice (docs/pacs.md).
        "CXR_PACS_STOW_REPORT_CLIENTS": "demo",
        # The DICOM intake keeps each job's original identifiers under this key, so the reports
        # the demo PACS gets carry the film's patient and study (docs/privacy.md).
        "CXR_REID_STORAGE_ROOT": str(REID_ROOT),
        # One audit file for the gateway, DICOM node and worker (`audit-export` reads it).
        "CXR_AUDIT_LOG": str(LOG_DIR / "audit.log"),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW_PORT}",
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    environment = {**os.environ, **{k: os.environ.get(k, v) for k, v in defaults.items()}}
    if not environment.get("CXR_REID_KEYS"):
        environment["CXR_REID_KEYS"] = reid_key()
    return environment


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> Callable[[], bool]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200
        except OSError:
            return False

    return check


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    timeout: float = 120.0
    needed: Callable[[], bool] = field(default=lambda: True)
    env: dict[str, str] = field(default_factory=dict)  # this service's own settings


RECONCILER_HEARTBEAT = VAR / "run" / "reconciler.heartbeat"


def _reconciled_since_start() -> bool:
    """A pass finished after this start (a heartbeat left by a killed run is older)."""
    try:
        return RECONCILER_HEARTBEAT.stat().st_mtime >= _pid_file("reconciler").stat().st_mtime
    except FileNotFoundError:
        return False


def _celery(*args: str) -> list[str]:
    return [str(VENV_BIN / "celery"), *args]


def services() -> list[Service]:
    py = sys.executable
    mlflow_dir = VAR / "mlflow"
    return [
        Service(
            "redis",
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            _redis_answers,
            needed=lambda: not _redis_answers(),
        ),
        Service(
            "mlflow",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(MLFLOW_PORT),
                "--backend-store-uri",
                f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination",
                str(mlflow_dir / "artifacts"),
                "--serve-artifacts",
                "--workers",
                "1",
            ],
            _http_ok(f"http://127.0.0.1:{MLFLOW_PORT}/health"),
            timeout=240.0,  # importing MLflow's server app takes minutes on a busy 2-core machine
        ),
        Service(
            "model-server",
            [
                py,
                "-m",
                "services.model_server",
                "--port",
                str(GRPC_PORT),
                "--rest_api_port",
                str(REST_PORT),
                "--model_config_file",
                str(SERVING_BASE / "models.config"),
                "--model_config_file_poll_wait_seconds",
                "5",
                "--file_system_poll_wait_seconds",
                "2",
            ],
            _http_ok(f"http://127.0.0.1:{REST_PORT}/v1/models/cxr-pneumonia"),
        ),
        Service(
            "worker",
            _celery(
                "-A",
                "services.worker.celery_app",
                "worker",
                "-Q",
                INFERENCE_QUEUE,
                "-n",
                f"{INFERENCE_QUEUE}@%h",
                "--loglevel",
                "INFO",
                # Pool processes: CXR_WORKER_CONCURRENCY, else two per CPU (WorkerSettings).
            ),
            lambda: _celery_ping("services.worker.celery_app", INFERENCE_QUEUE),
            env={"CXR_WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
                 "CXR_WORKER_METRICS_ADDRESS": "127.0.0.1",
                 "PROMETHEUS_MULTIPROC_DIR": str(PROMETHEUS_DIR / "worker")},
        ),
        Service(
            # jobs storage holds as unfinished but the broker lost (a Redis restart) go back on
            # the queue; the first pass runs at once and touches the heartbeat file
            "reconciler",
            [py, "-m", "services.worker", "reconcile", "--every", "120", "--min-age-s", "60",
             "--heartbeat-file", str(RECONCILER_HEARTBEAT)],
            _reconciled_since_start,
        ),
        Service(
            "trainer-worker",
            _celery(
                "-A",
                "services.trainer.celery_app",
                "worker",
                "-Q",
                TRAINING_QUEUE,
                "-n",
                f"{TRAINING_QUEUE}@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ),
            lambda: _celery_ping("services.trainer.celery_app", TRAINING_QUEUE),
        ),
        Service(
            "beat",
            _celery(
                "-A",
                "services.trainer.celery_app",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(VAR / "celerybeat-schedule"),
            ),
            lambda: _pid_alive("beat"),
            timeout=10,
        ),
        Service(
            "dicom-node",
            [py, "-m", "services.pacs"],
            lambda: _port_open(PACS_PORT),
            env={"CXR_PACS_METRICS_PORT": str(PACS_METRICS_PORT),
                 "CXR_PACS_METRICS_ADDRESS": "127.0.0.1"},
        ),
        Service(
            "report-sender",
            _celery(
                "-A",
                "services.pacs.celery_app",
                "worker",
                "-Q",
                REPORT_QUEUE,
                "-n",
                f"{REPORT_QUEUE}@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ),
            lambda: _celery_ping("services.pacs.celery_app", REPORT_QUEUE),
            env={"CXR_PACS_SENDER_METRICS_PORT": str(PACS_SENDER_METRICS_PORT),
                 "CXR_PACS_METRICS_ADDRESS": "127.0.0.1",
                 "PROMETHEUS_MULTIPROC_DIR": str(PROMETHEUS_DIR / "report-sender")},
        ),
        Service(
            "gateway",
            [py, "-m", "services.gateway"],
            _http_ok(f"https://127.0.0.1:{GATEWAY_PORT}/readyz"),
            env={"CXR_GATEWAY_METRICS_PORT": str(GATEWAY_METRICS_PORT)},
        ),
    ]


def _celery_ping(app: str, node_prefix: str) -> bool:
    result = subprocess.run(
        _celery(
            "-A",
            app,
            "inspect",
            "ping",
            "-d",
            f"{node_prefix}@{socket.gethostname()}",
            "--timeout",
            "2",
        ),
        env=local_environment(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return result.returncode == 0 and "pong" in result.stdout


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _pid_alive(name: str) -> bool:
    try:
        pid = int(_pid_file(name).read_text())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def _start(service: Service) -> None:
    log = open(LOG_DIR / f"{service.name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        service.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**local_environment(), **service.env},
        cwd=ROOT,
        start_new_session=True,
    )
    _pid_file(service.name).write_text(str(proc.pid))
    deadline = time.monotonic() + service.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"{service.name} exited with {proc.returncode}; see {LOG_DIR / service.name}.log"
            )
        if service.ready():
            print(f"  {service.name:15s} ready (pid {proc.pid})")
            return
        time.sleep(0.5)
    raise SystemExit(
        f"{service.name} not ready after {service.timeout:.0f}s; see {LOG_DIR / service.name}.log"
    )


def _bootstrap_model() -> None:
    """Register and publish the bundled model when the registry has no champion yet."""
    result = subprocess.run(
        [sys.executable, "-m", "services.trainer", "bootstrap"],
        env=local_environment(),
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit("registering the bundled model failed (see the output above)")


def up(only: Collection[str] | None = None) -> None:
    """Start every service, or those named in `only` (the model server then needs a
    `models.config` in the serving folder already, which the MLflow start-up otherwise writes)."""
    for folder in (RUN_DIR, LOG_DIR, SERVING_BASE, VAR / "mlflow"):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"Starting cxr-pneumonia on local defaults (logs in {LOG_DIR}):")
    for service in services():
        if only is not None and service.name not in only:
            continue
        if _pid_alive(service.name):
            print(f"  {service.name:15s} already running")
            continue
        if not service.needed():
            print(f"  {service.name:15s} using the one already on port {REDIS_PORT}")
            continue
        _start(service)
        if service.name == "mlflow":
            _bootstrap_model()
    key_file = VAR / "demo-api-key"
    key = key_file.read_text().strip() if key_file.exists() else "(see var/log/gateway.log)"
    print(f"""
cxr-pneumonia is up.
  Gateway (API and web page): https://localhost:{GATEWAY_PORT}/   (self-signed certificate)
  API documentation:          https://localhost:{GATEWAY_PORT}/docs
  MLflow UI:                  http://localhost:{MLFLOW_PORT}/
  DICOM node (C-STORE):       AE CXR at localhost:{PACS_PORT}
  DICOM reports sent to:      {SETTINGS.pacs_destination}
  Prometheus /metrics (plain HTTP, loopback only):
    gateway {GATEWAY_METRICS_PORT}, worker {WORKER_METRICS_PORT}, DICOM node {PACS_METRICS_PORT}, \
report sender {PACS_SENDER_METRICS_PORT}
  API key for the demo:       {key}
  (set CXR_API_KEYS="client:key,..." before `make up` to choose your own keys)
Stop everything with `make down`.""")


def down() -> None:
    for service in reversed(services()):
        pid_file = _pid_file(service.name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
        print(f"  {service.name:15s} stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args()
    up() if args.action == "up" else down()


if __name__ == "__main__":
    main()
