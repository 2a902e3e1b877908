"""Version management on a real model server process: new versions, broken ones, warm-up, start-up
without versions, and a graceful stop."""

from __future__ import annotations

import re
import shutil

import grpc
import httpx

from tests.model_server.calls import predict, status_code_of
from tests.support.model_server import ModelServer
from tests.support.procs import wait_until


def _metric(server: ModelServer, name: str, **labels: str) -> float:
    page = httpx.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10).text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(selector)}\}} (\S+)$", page, re.M)
    return float(match.group(1)) if match else 0.0


def _publish_broken(model_dir, tmp_path, version: int, breakage) -> None:
    """A copy of version 1 with `breakage` applied, moved in whole like a real publish."""
    staging = tmp_path / f"broken-{version}"
    shutil.copytree(model_dir / "1", staging)
    breakage(staging)
    staging.rename(model_dir / str(version))


def test_broken_versions_are_reported_then_a_good_one_replaces_the_serving_one(model_server,
                                                                               tmp_path):
    model_dir = model_server.base_path / "cxr-pneumonia"
    _publish_broken(model_dir, tmp_path, 2,
                    lambda d: (d / "saved_model.pb").write_bytes(b"this is not a SavedModel"))
    wait_until(lambda: model_server.version_states().get(2) == "END", 60,
               "broken version 2 reported", model_server.process)
    _publish_broken(model_dir, tmp_path, 3, lambda d: shutil.rmtree(d / "variables"))
    wait_until(lambda: model_server.version_states().get(3) == "END", 60,
               "version 3 without variables reported", model_server.process)

    assert model_server.version_states() == {3: "END", 2: "END", 1: "AVAILABLE"}
    assert predict(model_server).model_spec.version.value == 1
    statuses = httpx.get(f"{model_server.rest_url}/v1/models/cxr-pneumonia", timeout=10).json()
    errors = {int(s["version"]): s["status"] for s in statuses["model_version_status"]}
    assert errors[1] == {"error_code": "OK", "error_message": ""}
    for version in (2, 3):
        assert errors[version]["error_code"] != "OK"
        assert f"version: {version}}} failed" in errors[version]["error_message"]
    assert _metric(model_server, "model_server_load_failures_total",
                   model_name="cxr-pneumonia") == 2

    model_server.publish(4)
    model_server.wait_for_version(4, timeout=120)
    wait_until(lambda: model_server.version_states().get(1) == "END", 30,
               "version 1 unloaded under latest { num_versions: 1 }", model_server.process)
    assert predict(model_server).model_spec.version.value == 4
    assert status_code_of(lambda: predict(model_server, version=1)) == grpc.StatusCode.NOT_FOUND

    log = model_server.log_text()
    assert re.search(r"warmup data for model at \S+/4\. Number of warmup records read: 2\.", log)
    assert log.index("Successfully loaded servable version {name: cxr-pneumonia version: 4}") < \
        log.index("Unloading servable version {name: cxr-pneumonia version: 1}")
    assert _metric(model_server, "model_server_warmup_records_total",
                   model_name="cxr-pneumonia", version="4") == 2


def test_unavailable_until_published_then_sigterm_and_restart_on_the_same_ports(tmp_path):
    server = ModelServer(tmp_path / "models", tmp_path / "logs").start()
    try:
        assert status_code_of(lambda: predict(server)) == grpc.StatusCode.UNAVAILABLE
        assert server.version_states() == {}
        server.publish(1)
        server.wait_for_version(1, timeout=120)
        assert predict(server).model_spec.version.value == 1

        grpc_target, rest_url = server.grpc_target, server.rest_url
        assert server.stop() == 0
        assert "Model server stopped" in server.log_text()
        server.start()
        assert (server.grpc_target, server.rest_url) == (grpc_target, rest_url)
        assert predict(server).model_spec.version.value == 1
    finally:
        server.stop()
