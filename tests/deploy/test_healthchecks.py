"""The containers' health checks, run against real processes: they pass while the service is up
and fail once it is gone (so an orchestrator restarts what is really down, and only that)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.loaders import find, image_target, load_compose
from tests.support.procs import ManagedProcess, free_port, port_open, python_argv, wait_until

VENV_BIN = Path(sys.executable).parent
WORKER_START_S = 180  # importing TensorFlow on a busy machine


def compose_check(service: str) -> list[str]:
    """The compose health check as an argv (CMD-SHELL through sh, `$$` unescaped)."""
    kind, *rest = load_compose()["services"][service]["healthcheck"]["test"]
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0].replace("$$", "$")]
    return rest


def run_check(argv: list[str], env: dict[str, str]) -> int:
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(argv, env=full_env, capture_output=True, timeout=120,
                          check=False).returncode


def test_gateway_check_is_the_images_and_follows_the_process(gateway_factory):
    argv = compose_check("gateway")
    healthcheck = image_target("gateway").last("HEALTHCHECK")
    assert json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip()) == argv
    gateway = gateway_factory(tls=True)
    on_test_port = [a.replace("127.0.0.1:8443", f"127.0.0.1:{gateway.port}") for a in argv]
    on_test_port[0] = sys.executable
    assert run_check(on_test_port, {}) == 0
    gateway.stop()
    assert run_check(on_test_port, {}) != 0


@pytest.mark.slow
def test_worker_check_pings_the_worker_the_image_starts(tmp_path, redis_url):
    """The worker started with the image's own ENTRYPOINT + CMD answers the image's check."""
    command = image_target("worker").command()
    metrics_port = free_port()
    env = {
        "CXR_ENV": "test", "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(tmp_path / "storage"),
        "CXR_MODEL_SERVER_GRPC": f"127.0.0.1:{free_port()}",
        "CXR_WORKER_METRICS_PORT": str(metrics_port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    worker = ManagedProcess("image-worker", python_argv("-m", *command), tmp_path, env=env)
    check_env = {"CXR_REDIS_URL": redis_url, "HOSTNAME": socket.gethostname()}
    try:
        wait_until(lambda: port_open(metrics_port), WORKER_START_S, "worker", worker)
        assert run_check(compose_check("worker"), check_env) == 0
    finally:
        worker.stop(timeout=30)
    assert run_check(compose_check("worker"), check_env) != 0


def test_pacs_sender_probe_pings_the_sender_the_deployment_starts(tmp_path, redis_url, rendered):
    """The report sender started with the Deployment's command answers its liveness probe and
    compose's health check, and neither passes once it is gone."""
    pod = find(rendered["prod"], "Deployment", "pacs-sender")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {"CXR_ENV": "test", "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
           "CXR_STORAGE_ROOT": str(tmp_path / "storage")}
    sender = ManagedProcess("k8s-pacs-sender", python_argv("-m", *container["command"]), tmp_path,
                            env=env)
    probe = container["livenessProbe"]["exec"]["command"]
    check_env = {"CXR_REDIS_URL": redis_url, "HOSTNAME": socket.gethostname()}
    try:
        wait_until(lambda: "ready." in sender.log_tail(20000), 120, "pacs sender", sender)
        assert run_check(probe, check_env) == 0
        assert run_check(compose_check("pacs-sender"), check_env) == 0
    finally:
        sender.stop(timeout=30)
    assert run_check(probe, check_env) != 0


def test_reconciler_check_follows_the_loop_compose_starts(tmp_path, redis_url):
    """compose's reconciler, started with its own command line (heartbeat file moved under the
    test's folder), is healthy once a pass has finished, not before, not with a heartbeat an hour
    old, and not once the loop has stopped."""
    service = load_compose()["services"]["reconciler"]
    argv = [*service["entrypoint"], *service["command"]]
    container_path = argv[argv.index("--heartbeat-file") + 1]
    heartbeat = tmp_path / "reconciler.heartbeat"
    check = [part.replace(container_path, str(heartbeat)) for part in compose_check("reconciler")]
    assert check != compose_check("reconciler")
    assert run_check(check, {}) != 0  # no pass yet
    env = {"CXR_ENV": "test", "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
           "CXR_STORAGE_ROOT": str(tmp_path / "storage")}
    loop_argv = python_argv(*[part.replace(container_path, str(heartbeat)) for part in argv[1:]])
    loop = ManagedProcess("compose-reconciler", loop_argv, tmp_path, env=env)
    try:
        wait_until(heartbeat.is_file, 60, "a first reconcile pass", loop)
        assert run_check(check, {}) == 0
        an_hour_ago = time.time() - 3600
        os.utime(heartbeat, (an_hour_ago, an_hour_ago))
        assert run_check(check, {}) != 0
        os.utime(heartbeat)
        assert run_check(check, {}) == 0
        loop.popen.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        assert loop.popen.wait(timeout=30) == 0, loop.log_tail()
    finally:
        loop.stop()
    assert run_check(check, {}) != 0
