"""`python -m services.model_server`: TF Serving's flags, then serve gRPC and REST until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from services.model_server.errors import ServingError
from services.model_server.grpc_api import build_grpc_server
from services.model_server.model_config import (
    parse_model_config,
    read_model_config_file,
    single_model_config,
)
from services.model_server.monitoring import metrics_path
from services.model_server.rest_api import build_rest_server
from services.model_server.versions import ModelManager

log = logging.getLogger("services.model_server")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _boolean(text: str) -> bool:
    """TF Serving's boolean flags: `--flag`, `--flag=true`, `--flag=false`."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def parse_flags(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.model_server", description=__doc__)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address of the gRPC and REST ports (the APIs have no authentication: "
        "loopback by default; 0.0.0.0 listens on every interface, as TF Serving does)",
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 disables it")
    parser.add_argument("--model_name", default="default")
    parser.add_argument(
        "--model_base_path",
        default="",
        help="folder (or s3://bucket/prefix) holding numbered version folders",
    )
    parser.add_argument(
        "--model_config_file",
        default="",
        help="text-format ModelServerConfig; overrides --model_name/--model_base_path",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="re-read the config file this often; 0 reads it once",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="look for new versions this often; 0 looks once, below 0 never",
    )
    parser.add_argument(
        "--allow_version_labels_for_unavailable_models",
        type=_boolean,
        nargs="?",
        const=True,
        default=False,
        help="let a label name a version that is not loaded (yet)",
    )
    parser.add_argument(
        "--monitoring_config_file",
        default="",
        help="text-format MonitoringConfig: the Prometheus page's path, or off",
    )
    parser.add_argument(
        "--grpc_max_message_bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC message accepted or sent, and largest REST body",
    )
    parser.add_argument(
        "--model_cache_dir",
        default="",
        help="where versions read from s3:// are copied; a temporary folder if unset",
    )
    flags = parser.parse_args(argv)
    if not flags.model_config_file and not flags.model_base_path:
        parser.error("give --model_base_path (with --model_name) or --model_config_file")
    return flags


def _every(seconds: int, stop: threading.Event, action, name: str) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(seconds):
            try:
                action()
            except Exception:  # noqa: BLE001 - a failed poll is logged; the next one retries
                log.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class ConfigFileWatcher:
    """Re-applies the config file when its text changed or its last application failed."""

    def __init__(self, path: str, manager: ModelManager, applied_text: str) -> None:
        self.path, self.manager, self.applied_text = Path(path), manager, applied_text

    def poll(self) -> None:
        text = self.path.read_text()
        if text == self.applied_text:
            return
        try:
            self.manager.apply_config(read_model_config_file(self.path))
        except ServingError as exc:
            log.error("Config file %s not applied: %s", self.path, exc.message)
            return
        self.applied_text = text
        log.info("Applied changed config file %s", self.path)


def serve(flags: argparse.Namespace) -> None:
    cache_dir = Path(flags.model_cache_dir or tempfile.mkdtemp(prefix="model-server-cache-"))
    manager = ModelManager(cache_dir, flags.allow_version_labels_for_unavailable_models)
    config_text = Path(flags.model_config_file).read_text() if flags.model_config_file else ""
    config = (
        parse_model_config(config_text)
        if config_text
        else single_model_config(flags.model_name, flags.model_base_path)
    )
    # Like TF Serving, load what is there before opening the ports.
    try:
        manager.apply_config(config)
    except ServingError as exc:  # labels naming versions that did not load: retried on change
        log.error("Initial model config only partly applied: %s", exc.message)
        config_text = ""

    stop = threading.Event()
    if flags.file_system_poll_wait_seconds > 0:
        _every(flags.file_system_poll_wait_seconds, stop, manager.sync, "version-poll")
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        watcher = ConfigFileWatcher(flags.model_config_file, manager, config_text)
        _every(flags.model_config_file_poll_wait_seconds, stop, watcher.poll, "config-poll")

    grpc_server = build_grpc_server(manager, flags.host, flags.port, flags.grpc_max_message_bytes)
    grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d ...", flags.host, flags.port)
    rest_server = None
    if flags.rest_api_port:
        rest_server = build_rest_server(
            manager,
            flags.host,
            flags.rest_api_port,
            flags.grpc_max_message_bytes,
            metrics_path(flags.monitoring_config_file),
        )
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", flags.host, flags.rest_api_port)

    def on_signal(signum, _frame) -> None:
        log.info("Received signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    if rest_server is not None:
        rest_server.shutdown()
    grpc_server.stop(grace=5).wait()
    manager.unload_all()
    log.info("Model server stopped")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    flags = parse_flags(argv)
    try:
        serve(flags)
    except (ServingError, OSError) as exc:  # a bad config or a port in use: stop, like TF Serving
        log.error("Model server cannot start: %s", getattr(exc, "message", exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
