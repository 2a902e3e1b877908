"""Site operating points end to end: gateway -> worker -> model server, each client's site answers
at its own point for the version the `stable` label serves, and a site refitted under load
switches without a failed request."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.operating_point import Calibration, OperatingPoint, site_operating_point_key
from shared.storage import LocalStorage
from tests.gateway.uploads import sample_xray
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.model_server import ModelServer
from tests.support.worker import CeleryWorker, start_celery_worker

pytestmark = pytest.mark.slow

MODEL = "cxr-pneumonia"


def models_config(models_dir: Path, stable: int) -> str:
    return (f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_dir}/{MODEL}" '
            f'model_platform: "tensorflow" model_version_policy {{ specific {{ versions: 1 '
            f'versions: 2 }} }} version_labels {{ key: "stable" value: {stable} }} }} }}')


def site_point(site: str, threshold: float, intercept: float = 0.0,
               method: str = "platt") -> OperatingPoint:
    return OperatingPoint(
        site=site, model_name=MODEL, calibration=Calibration(method=method, intercept=intercept),
        threshold=threshold, target_sensitivity=0.95, model_threshold=0.5,
        fitted_at=datetime.now(UTC), data_fingerprint="cd" * 32, n=200, n_pneumonia=100,
        n_normal=100)


@dataclass
class Stack:
    gateway: GatewayProcess
    worker: CeleryWorker
    server: ModelServer
    serving: LocalStorage

    def publish_point(self, version: int, point: OperatingPoint) -> None:
        self.serving.put(site_operating_point_key(MODEL, version, point.site), point.to_json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server) -> Iterator[Stack]:
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp("sites")
    models = work / "models"
    server = ModelServer(models, work / "logs", config_file=work / "models.config",
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    server.publish(1, threshold=0.5)
    server.publish(2, threshold=0.5)  # newer, but not the stable one
    server.config_file.write_text(models_config(models, stable=1))
    server.start(wait_for=1)
    gateway = worker = None
    try:
        gateway = start_gateway(work, redis_server.url, env={
            "CXR_RATE_LIMIT_PER_MINUTE": "100000",
            "CXR_SITE_CLIENTS": "alice:north,bob:south"})
        worker = start_celery_worker(
            work / "worker", redis_url=redis_server.url, storage_root=gateway.storage_root,
            model_server_target=server.grpc_target, concurrency=2,
            env={"CXR_SERVING_VERSION_LABEL": "stable", "CXR_MODEL_BASE_PATH": str(models),
                 "CXR_SITE_OPERATING_POINT_REFRESH_S": "0.5"})
        yield Stack(gateway, worker, server, LocalStorage(models))
    finally:
        for process in (worker, gateway, server):
            if process is not None:
                process.stop()


def upload(http, path: Path) -> str:
    response = http.post("/v1/predictions", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def finished(http, job_id: str) -> dict:
    for _ in range(12):
        view = http.get(f"/v1/predictions/{job_id}", params={"wait": 30}).json()
        if view["status"] in ("succeeded", "failed"):
            return view
    raise AssertionError(f"job {job_id} did not finish: {view}")


def test_each_client_is_answered_at_its_sites_operating_point(stack):
    stack.publish_point(1, site_point("north", threshold=0.0))  # everything is PNEUMONIA
    stack.publish_point(1, site_point("south", threshold=0.999, intercept=-2.0))
    stack.publish_point(2, site_point("south", threshold=0.0))  # not served: must not answer
    image = sample_xray("NORMAL")
    views = {}
    for client in ("alice", "bob", "carol"):
        with stack.gateway.client(client, timeout=60) as http:
            views[client] = finished(http, upload(http, image))
    for view in views.values():
        assert view["status"] == "succeeded", view
        assert view["result"]["model"]["version"] == 1  # the stable label, not the latest
    model_p = views["carol"]["result"]["pneumonia_probability"]

    carol = views["carol"]
    assert carol["site"] == "default"
    assert carol["result"]["operating_point"] == {
        "site": "default", "threshold": pytest.approx(0.5), "calibrated_by": "model",
        "fitted_at": None}
    assert carol["result"]["label"] == ("PNEUMONIA" if model_p >= 0.5 else "NORMAL")

    north = views["alice"]
    assert north["site"] == "north"
    assert north["result"]["operating_point"]["calibrated_by"] == "site"
    assert north["result"]["threshold"] == 0.0 and north["result"]["label"] == "PNEUMONIA"
    assert north["result"]["pneumonia_probability"] == pytest.approx(model_p, abs=1e-6)

    south = views["bob"]["result"]
    expected = 1 / (1 + math.exp(-(math.log(model_p / (1 - model_p)) - 2.0)))
    assert south["operating_point"]["site"] == "south"
    assert south["pneumonia_probability"] == pytest.approx(expected, abs=1e-6)
    assert south["threshold"] == pytest.approx(0.999) and south["label"] == "NORMAL"
    classes = south["class_probabilities"]
    assert classes["bacterial"] + classes["viral"] == pytest.approx(expected, abs=1e-6)
    assert sum(classes.values()) == pytest.approx(1.0, abs=1e-6)


def test_a_site_refitted_under_load_switches_without_a_failed_request(stack):
    stack.publish_point(1, site_point("north", threshold=0.0))
    time.sleep(1.0)  # past the worker's refresh interval
    image = sample_xray("PNEUMONIA")
    jobs: list[str] = []
    refitted_at = None
    with stack.gateway.client("alice", timeout=60) as http:
        while len(jobs) < 40:
            if refitted_at is None and len(jobs) == 15:
                finished(http, jobs[0])  # answers at the old point exist, more are queued
                stack.publish_point(1, site_point("north", threshold=1.0))  # now all NORMAL
                refitted_at = datetime.now(UTC)
            jobs.append(upload(http, image))
            time.sleep(0.15)
        views = [finished(http, job_id) for job_id in jobs]
    assert [v["status"] for v in views] == ["succeeded"] * len(views), views
    by_start = sorted(views, key=lambda v: v["started_at"])
    before = [v["result"]["threshold"] for v in by_start
              if datetime.fromisoformat(v["finished_at"]) < refitted_at]
    after = [v["result"]["threshold"] for v in by_start
             if (datetime.fromisoformat(v["started_at"]) - refitted_at).total_seconds() > 2]
    assert before and set(before) == {0.0}
    assert after and set(after) == {1.0}
    for view in views:
        result = view["result"]
        assert result["label"] == ("PNEUMONIA" if result["threshold"] == 0.0 else "NORMAL")
        assert result["operating_point"]["site"] == "north"
