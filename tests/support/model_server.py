"""The local model server (`python -m services.model_server`) as a real process on free ports.

`model_server` (one per test, free to publish versions into) and `shared_model_server` (one per
session, read-only) start it on a tmp base folder already holding version 1 of a tiny model made by
the trainer's own export code, and wait until that version is AVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import pytest

from tests.support.procs import ManagedProcess, free_port, port_open, python_argv, wait_until

MODEL_NAME = "cxr-pneumonia"
START_TIMEOUT_S = 180  # importing TensorFlow alone takes a while on a busy machine


class ModelServer:
    """One model server process; `stop()` and `start()` keep the same ports."""

    def __init__(self, base_path: Path, log_dir: Path, *, model_name: str = MODEL_NAME,
                 model_base_path: str | None = None, config_file: Path | None = None,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.base_path = Path(base_path)
        self.log_dir = Path(log_dir)
        self.model_name = model_name
        self.model_base_path = model_base_path or str(self.base_path / model_name)
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def argv(self) -> list[str]:
        models = (["--model_config_file", str(self.config_file)] if self.config_file else
                  ["--model_name", self.model_name, "--model_base_path", self.model_base_path])
        return python_argv("-m", "services.model_server", "--port", str(self.grpc_port),
                           "--rest_api_port", str(self.rest_port), *models,
                           "--file_system_poll_wait_seconds", "1", *self.extra_args)

    def start(self, wait_for: int | None = None) -> ModelServer:
        """Start the process; wait until its ports answer (and version `wait_for` is loaded)."""
        self.process = ManagedProcess(f"model-server-{self.grpc_port}", self.argv(), self.log_dir,
                                      env=self.env)
        if wait_for is not None:
            self.wait_for_version(wait_for, START_TIMEOUT_S)
        else:
            wait_until(self._ports_open, START_TIMEOUT_S, "model server ports", self.process)
        return self

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL); returns the exit code."""
        if self.process is None:
            return None
        self.process.stop(timeout=20)
        return self.process.popen.returncode

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace") if self.process else ""

    def publish(self, version: int, **kwargs) -> Path:
        """Export another tiny model version into the base folder (appears atomically)."""
        from tests.support.tiny_model import make_tiny_serving_model

        kwargs.setdefault("seed", version)
        return make_tiny_serving_model(self.base_path, version, model_name=self.model_name,
                                       **kwargs)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)

    def version_states(self, model_name: str | None = None) -> dict[int, str]:
        """{version: state name} from GetModelStatus ({} while the model has no version yet)."""
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name or self.model_name
        with self.channel() as channel:
            try:
                response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    request, timeout=10)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return {}
                raise
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: state_name(s.state) for s in response.model_version_status}

    def wait_for_version(self, version: int, timeout: float = 120,
                         model_name: str | None = None) -> None:
        wait_until(lambda: self.version_states(model_name).get(version) == "AVAILABLE", timeout,
                   f"version {version} AVAILABLE on the model server", self.process)

    def _ports_open(self) -> bool:
        return port_open(self.grpc_port) and port_open(self.rest_port)


def start_model_server(tmp_dir: Path, **kwargs) -> ModelServer:
    """A model server over `tmp_dir/models` holding version 1, started and serving it."""
    server = ModelServer(tmp_dir / "models", tmp_dir / "logs", **kwargs)
    server.publish(1)
    return server.start(wait_for=1)


@pytest.fixture
def model_server(tmp_path) -> Iterator[ModelServer]:
    server = start_model_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_model_server(tmp_path_factory) -> Iterator[ModelServer]:
    """One server for the session: only for tests that publish nothing and stop nothing."""
    server = start_model_server(tmp_path_factory.mktemp("shared-model-server"))
    yield server
    server.stop()


def labelled_models_config(server: ModelServer, labels: Mapping[str, int]) -> str:
    """The model config serving versions 1 and 2 of `server`'s model with `labels` (label ->
    version) on them, as the trainer's publishing writes it."""
    from services.trainer.registry.publish import render_models_config

    return render_models_config(server.model_name, server.model_base_path, [1, 2], stable=None,
                                labels=labels)


def start_labelled_server(tmp_dir: Path, labels: Mapping[str, int]) -> ModelServer:
    """A model server holding version 1 (threshold 0.5) and version 2 (threshold 0.3), `labels`
    on them, rereading its config file every second so a test can move a label."""
    server = ModelServer(tmp_dir / "models", tmp_dir / "logs",
                         config_file=tmp_dir / "models.config",
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    server.publish(1, threshold=0.5)
    server.publish(2, threshold=0.3)
    server.config_file.write_text(labelled_models_config(server, labels))
    server.start(wait_for=1)
    server.wait_for_version(2)
    return server
