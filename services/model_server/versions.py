"""Model versions, as TF Serving manages them.

Each sync scans every model's base path, loads the versions its policy wants (warm-up first, and
only then AVAILABLE and routed to), and unloads the AVAILABLE versions the policy no longer wants.
A version that fails to load is kept in the status list (state END with the error) and is not a
candidate again until its files change, so a broken new version never displaces the one serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from services.model_server import metrics
from services.model_server.errors import ServingError, invalid_argument, not_found
from services.model_server.model_config import (
    ModelConfig,
    ModelServerConfig,
    validate_model_config,
    wanted_versions,
)
from services.model_server.servable import LoadedVersion
from services.model_server.source import VersionSource, open_source
from services.model_server.warmup import run_warmup

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionEntry:
    version: int
    state: int
    fingerprint: str = ""
    error: ServingError | None = None
    servable: LoadedVersion | None = None

    def failed_with(self, fingerprint: str) -> bool:
        return (
            self.state == State.END and self.error is not None and self.fingerprint == fingerprint
        )


@dataclass
class ModelState:
    config: ModelConfig
    source: VersionSource
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def available(self) -> list[int]:
        return sorted(v for v, e in self.versions.items() if e.state == State.AVAILABLE)


def _load_error(model: str, version: int, exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        code = exc.code
    elif isinstance(exc, tf.errors.OpError):
        code = next(
            (c for c in grpc.StatusCode if c.value[0] == exc.error_code), grpc.StatusCode.UNKNOWN
        )
    elif isinstance(exc, DecodeError):
        code = grpc.StatusCode.DATA_LOSS
    elif isinstance(exc, FileNotFoundError):
        code = grpc.StatusCode.NOT_FOUND
    else:
        code = grpc.StatusCode.UNKNOWN
    return ServingError(
        code, f"Loading servable: {{name: {model} version: {version}}} failed: {exc}"
    )


def _request_text(name: str, version: int | None) -> str:
    target = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return f"Servable not found for request: {target}"


class ModelManager:
    """Every configured model with its versions; safe to call from many request threads."""

    def __init__(self, cache_dir: Path, allow_labels_for_unavailable: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.Lock()  # guards the model and version tables
        self._sync_lock = threading.Lock()  # one sync or config change at a time
        self._models: dict[str, ModelState] = {}

    # ---- configuration and syncing -------------------------------------------------------------

    def apply_config(self, config: ModelServerConfig) -> None:
        """Replace the model config, load what it wants, then set labels (like ReloadConfig)."""
        validate_model_config(config)
        with self._sync_lock:
            self._replace_models(config)
            for state in list(self._models.values()):
                self._sync_model(state)
            self._apply_labels(config)

    def sync(self) -> None:
        """One poll of every model's base path."""
        with self._sync_lock:
            for state in list(self._models.values()):
                self._sync_model(state)

    def unload_all(self) -> None:
        with self._sync_lock:
            for state in list(self._models.values()):
                for version in state.available():
                    self._unload(state, version)

    def _replace_models(self, config: ModelServerConfig) -> None:
        models: dict[str, ModelState] = {}
        for model_config in config.model_config_list.config:
            current = self._models.get(model_config.name)
            copy = ModelConfig()
            copy.CopyFrom(model_config)
            if current is not None and current.config.base_path == model_config.base_path:
                current.config = copy
                models[copy.name] = current
            else:
                log.info("Adding model %s from %s", copy.name, copy.base_path)
                models[copy.name] = ModelState(copy, open_source(copy.base_path, self.cache_dir))
        dropped = [s for name, s in self._models.items() if models.get(name) is not s]
        with self._lock:
            self._models = models
        for state in dropped:
            for version in state.available():
                self._unload(state, version)

    def _candidates(self, state: ModelState, found: dict[int, str]) -> set[int]:
        with self._lock:
            return {
                v
                for v, fingerprint in found.items()
                if not (v in state.versions and state.versions[v].failed_with(fingerprint))
            }

    def _sync_model(self, state: ModelState) -> None:
        try:
            found = state.source.scan()
        except Exception as exc:  # noqa: BLE001 - storage trouble: keep serving what is loaded
            log.error(
                "Cannot list versions of model %s under %s: %s",
                state.name,
                state.source.base_path,
                exc,
            )
            return
        for version in sorted(wanted_versions(state.config, self._candidates(state, found))):
            if version not in state.available():
                self._load(state, version, found[version])
        # Recomputed after loading: a version that just failed is no longer a candidate, so
        # the version serving before it stays wanted and loaded.
        still_wanted = wanted_versions(state.config, self._candidates(state, found))
        for version in state.available():
            if version not in still_wanted:
                self._unload(state, version)

    def _load(self, state: ModelState, version: int, fingerprint: str) -> None:
        entry = VersionEntry(version, State.LOADING, fingerprint)
        with self._lock:
            state.versions[version] = entry
        log.info("Loading servable version {name: %s version: %d}", state.name, version)
        try:
            servable = LoadedVersion(state.name, version, state.source.fetch(version))
            warmed = run_warmup(servable)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, never fatal
            error = _load_error(state.name, version, exc)
            log.error("%s", error.message)
            metrics.LOAD_FAILURES.labels(state.name).inc()
            state.source.release(version)
            with self._lock:
                entry.state, entry.error = State.END, error
            return
        metrics.WARMUP_RECORDS.labels(state.name, str(version)).inc(warmed)
        with self._lock:
            entry.servable, entry.state = servable, State.AVAILABLE
            metrics.LOADED_VERSIONS.labels(state.name).set(len(state.available()))
        log.info("Successfully loaded servable version {name: %s version: %d}", state.name, version)

    def _unload(self, state: ModelState, version: int) -> None:
        with self._lock:
            entry = state.versions[version]
            entry.state = State.UNLOADING
        log.info("Unloading servable version {name: %s version: %d}", state.name, version)
        with self._lock:
            # Requests already running hold their own reference and finish normally.
            entry.servable, entry.state = None, State.END
            metrics.LOADED_VERSIONS.labels(state.name).set(len(state.available()))
        state.source.release(version)
        log.info("Done unloading servable version {name: %s version: %d}", state.name, version)

    def _apply_labels(self, config: ModelServerConfig) -> None:
        problems = []
        for model_config in config.model_config_list.config:
            state = self._models[model_config.name]
            labels = dict(model_config.version_labels)
            unavailable = [
                f"Request to assign label to version {v} of model {state.name}, which is not "
                "currently available for inference"
                for v in labels.values()
                if v not in state.available()
            ]
            if unavailable and not self.allow_labels_for_unavailable:
                problems.extend(unavailable)
                continue
            with self._lock:
                state.labels = labels
        if problems:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))

    # ---- requests --------------------------------------------------------------------------------

    def _requested_version(self, state: ModelState | None, spec: model_pb2.ModelSpec) -> int | None:
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if state is None or spec.version_label not in state.labels:
                raise invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
            return state.labels[spec.version_label]
        return spec.version.value if choice == "version" else None

    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names (version, label, or latest)."""
        if not spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            state = self._models.get(spec.name)
            version = self._requested_version(state, spec)
            if state is None:
                raise not_found(_request_text(spec.name, version))
            if version is None:
                available = state.available()
                if not available:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"Model {spec.name} has no version available yet",
                    )
                version = available[-1]
            entry = state.versions.get(version)
            if entry is None or entry.servable is None:
                raise not_found(_request_text(spec.name, version))
            return entry.servable

    def version_statuses(
        self, spec: model_pb2.ModelSpec
    ) -> list[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus: every version seen (or the one asked for) with its state and error."""
        if not spec.name:
            raise invalid_argument("Missing model name in request.")
        with self._lock:
            state = self._models.get(spec.name)
            version = self._requested_version(state, spec)
            if state is None or not state.versions:
                raise not_found(f"Could not find any versions of model {spec.name}")
            if version is not None and version not in state.versions:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            entries = (
                [state.versions[version]]
                if version is not None
                else [state.versions[v] for v in sorted(state.versions, reverse=True)]
            )
            return [self._status_proto(e) for e in entries]

    @staticmethod
    def _status_proto(entry: VersionEntry) -> get_model_status_pb2.ModelVersionStatus:
        status = get_model_status_pb2.ModelVersionStatus(version=entry.version, state=entry.state)
        status.status.SetInParent()  # TF Serving always reports it, "OK" included
        if entry.error is not None:
            status.status.error_code = entry.error.code_number
            status.status.error_message = entry.error.message
        return status
