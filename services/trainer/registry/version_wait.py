"""Wait until the model server has loaded a version, before a version label is moved onto it.

TF Serving assigns a label only to a version that is already loaded (see its serving_config
docs: otherwise requests for the label would fail while the new version loads), so publishing
first lists the new version, waits here, then moves `stable`.
"""

from __future__ import annotations

import logging
import time

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

log = logging.getLogger(__name__)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


class VersionLoadWaiter:
    """`wait(version)`: True once the server reports it AVAILABLE; False on timeout or no server."""

    def __init__(self, target: str, model_name: str, timeout_s: float,
                 poll_s: float = 1.0) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def _state(self, stub, version: int) -> int | None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        request.model_spec.version.value = version
        response = stub.GetModelStatus(request, timeout=10)
        states = [s.state for s in response.model_version_status if s.version == version]
        return states[0] if states else None

    def wait(self, version: int) -> bool:
        deadline = time.monotonic() + self.timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            while time.monotonic() < deadline:
                try:
                    if self._state(stub, version) == AVAILABLE:
                        return True
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        # No server running: whichever starts next reads the final config.
                        log.info("no model server at %s; not waiting for version %d",
                                 self.target, version)
                        return False
                    # NOT_FOUND: the new config or the version is not picked up yet.
                time.sleep(self.poll_s)
        log.warning("version %d of %s not loaded on %s after %.0fs; moving the label anyway",
                    version, self.model_name, self.target, self.timeout_s)
        return False
