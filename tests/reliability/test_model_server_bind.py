"""The local model server (`python -m services.model_server`, real processes) listens on loopback
unless told otherwise: its gRPC and REST APIs have no authentication.

Before `--host`, both ports were bound to 0.0.0.0: anyone who could reach the machine could ask
for predictions, read the model's metadata or reload its config. A socket bound to 127.0.0.1
accepts connections to 127.0.0.1 only, so a connection to another address of the machine is
refused; 127.0.0.2 (Linux answers the whole of 127/8) stands for that address here, without
depending on the machine's network interfaces. Compose and Kubernetes run TensorFlow Serving
itself, with its own bind (all interfaces of its container, behind the network policies).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.model_server import MODEL_NAME, START_TIMEOUT_S, ModelServer
from tests.support.procs import ManagedProcess, port_open, wait_until

pytestmark = pytest.mark.slow

OTHER_ADDRESS = "127.0.0.2"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, ModelServer]]:
    """Two servers over an empty model folder (the ports open without a version): one with the
    default bind, one told to listen on every interface. Started together (TensorFlow imports
    are slow), then waited for."""
    started = {}
    for name, extra in (("default", []), ("every_interface", ["--host", "0.0.0.0"])):
        root = Path(tmp_path_factory.mktemp(f"bind-{name}"))
        (root / "models" / MODEL_NAME).mkdir(parents=True)
        server = ModelServer(root / "models", root / "logs", extra_args=extra)
        server.process = ManagedProcess(f"model-server-{server.grpc_port}", server.argv(),
                                        server.log_dir, env=server.env)
        started[name] = server
    try:
        for server in started.values():
            wait_until(lambda s=server: port_open(s.grpc_port) and port_open(s.rest_port),
                       START_TIMEOUT_S, "model server ports", server.process)
        yield started
    finally:
        for server in started.values():
            server.stop()


def test_the_model_server_listens_on_loopback_by_default(servers):
    server = servers["default"]
    assert reachable("127.0.0.1", server.grpc_port) and reachable("127.0.0.1", server.rest_port)
    assert httpx.get(f"{server.rest_url}/v1/models/{MODEL_NAME}", timeout=10).status_code < 500
    assert not reachable(OTHER_ADDRESS, server.grpc_port), "gRPC listens beyond loopback"
    assert not reachable(OTHER_ADDRESS, server.rest_port), "REST listens beyond loopback"
    assert "at 127.0.0.1:" in server.log_text()


def test_another_listen_address_is_a_flag_away(servers):
    server = servers["every_interface"]
    assert reachable(OTHER_ADDRESS, server.grpc_port) and reachable(OTHER_ADDRESS, server.rest_port)
