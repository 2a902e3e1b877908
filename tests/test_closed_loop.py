"""The whole loop on real processes: gateway -> Redis -> Celery worker -> model server, job storage
on moto's S3, MLflow registry.

Two API clients of two sites predict on the sample films and confirm them; a retraining reads the
confirmed films of both sites, registers a challenger that waits for approval while the serving
config stays as it was; the challenger runs in shadow beside the champion (its outputs stored
apart, never answered); its approval publishes it and the next answer comes from it; the drift
check fires on a shifted stream and stays quiet on the site's own films, with its gauges in the
worker's /metrics; another client's feedback on a job is refused."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from services.trainer.artifact.drift_reference import model_outputs
from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.registry.approval import approve
from services.trainer.registry.bootstrap import bootstrap
from services.trainer.registry.promotion import publish_shadow_registered
from services.trainer.registry.publish import CONFIG_KEY, parse_models_config
from services.trainer.registry.registry import CHALLENGER, ModelRegistry
from services.trainer.retraining import retrain
from services.trainer.settings import TrainerSettings
from services.worker.grpc_serving import ServingClient
from shared.drift import DriftRecorder, batch_statistics, reference_key
from shared.errors import CXRError
from shared.feedback import confirmed_labels
from shared.jobs.keys import (
    confirmed_film_key,
    confirmed_label_key,
    confirmed_site_prefix,
    shadow_key,
    storage_key,
)
from shared.jobs.queue import DRIFT_CHECK_TASK, INFERENCE_QUEUE
from shared.shadow import read_shadow
from shared.storage import S3Storage
from tests.gateway.uploads import sample_xray
from tests.support.gateway import start_gateway
from tests.support.model_server import MODEL_NAME, ModelServer
from tests.support.procs import REPO_ROOT, wait_until
from tests.support.stack import predicted_sample
from tests.support.tiny_model import make_tiny_serving_model
from tests.support.worker import start_celery_worker
from tests.worker.jobs import metric_value, wait_for_metric

pytestmark = pytest.mark.slow

SAMPLE = REPO_ROOT / "data" / "sample"
BUCKET, PREFIX = "cxr-closed-loop", "loop"
SITES = {"alice": "north", "bob": "south"}
# The films each client sends and its reader confirms: (true label, index in data/sample).
FILMS = {"alice": [("NORMAL", 0), ("PNEUMONIA", 0), ("NORMAL", 1)],
         "bob": [("PNEUMONIA", 1), ("NORMAL", 2)]}
SMOKE_TRAINING = {"epochs": 1, "batch_size": 4, "backbone": "custom", "width": 4,
                  "max_images": 24, "verbose": 0, "cache_dir": None}
LENIENT_GATES = {"gate_min_sensitivity": 0, "gate_min_specificity": 0, "gate_min_auroc": 0,
                 "gate_max_auroc_drop": 1, "gate_max_sensitivity_drop": 1}
DRIFT_ENV = {"CXR_DRIFT_MIN_FILMS": "15",
             # The reference holds only the few gate films: the threshold leaves room for the
             # sampling noise of a site's own films; the inverted stream crosses it.
             "CXR_DRIFT_KS_THRESHOLD": "0.6"}


def base_data_set(folder: Path) -> Path:
    """The sample films less those the readers confirm: to the trainer those are new films."""
    shutil.copytree(SAMPLE, folder)
    for films in FILMS.values():
        for label, index in films:
            (folder / label / sample_xray(label, index).name).unlink()
    return folder




def served(serving: Path) -> tuple[list[int], dict[str, int]]:
    config = parse_models_config((serving / CONFIG_KEY).read_text())
    (model,) = config.model_config_list.config
    return sorted(model.model_version_policy.specific.versions), dict(model.version_labels)


def label_version(target: str, label: str) -> int | None:
    """The version the model server answers under `label` (None while it has no such label)."""
    probe = ServingClient(target, MODEL_NAME, 10, label)
    try:
        return probe.metadata().version
    except CXRError:
        return None
    finally:
        probe.close()


def site_statistics(version_dir: Path, invert: bool) -> list[dict[str, float]]:
    """The sample films (grey levels inverted or not) as the worker records them for `version`."""
    images = load_images(scan_dataset(SAMPLE))
    if invert:
        images = (255 - images).astype(np.uint8)
    return batch_statistics(images, model_outputs(version_dir, images))


def test_the_loop_from_predictions_to_a_published_retrained_version(
        tmp_path, redis_server, s3_server, mlflow_server):
    redis_client = redis_server.client()
    redis_client.flushall()
    s3_server.make_bucket(BUCKET)
    s3_env = s3_server.service_env(BUCKET, PREFIX)
    storage = S3Storage(BUCKET, PREFIX, s3_server.endpoint_url, "us-east-1")
    serving = tmp_path / "serving"
    name = f"cxr-loop-{uuid.uuid4().hex[:8]}"
    common = {"mlflow_tracking_uri": mlflow_server.tracking_uri, "registered_model_name": name,
              "mlflow_experiment": name, "model_base_path": str(serving),
              "audit_log": str(tmp_path / "model-audit.jsonl")}

    # 1. A first small version, registered, champion and published; the model server follows
    # the published config.
    make_tiny_serving_model(tmp_path / "bundled", 1, seed=3)
    first = bootstrap(TrainerSettings(**common, bundled_models_dir=str(tmp_path / "bundled"),
                                      publish_wait_for_load_s=0))
    assert first["action"] == "registered" and first["version"] == 1
    assert served(serving) == ([1], {"stable": 1})
    server = ModelServer(serving, tmp_path / "model-server-logs", config_file=serving / CONFIG_KEY,
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    server.start(wait_for=1)
    gateway = worker = None
    celery = Celery("closed-loop", broker=redis_server.url)
    try:
        gateway = start_gateway(tmp_path / "gateway", redis_server.url, env={
            **s3_env, "CXR_MODEL_SERVER_REST": server.rest_url,
            "CXR_RATE_LIMIT_PER_MINUTE": "100000",
            "CXR_SITE_CLIENTS": ",".join(f"{c}:{s}" for c, s in SITES.items())})
        worker = start_celery_worker(
            tmp_path / "worker", redis_url=redis_server.url, storage_root=tmp_path / "unused",
            model_server_target=server.grpc_target, queues="inference,shadow",
            env={**s3_env, **DRIFT_ENV, "CXR_MODEL_BASE_PATH": str(serving),
                 "CXR_SERVING_VERSION_LABEL": "stable", "CXR_SHADOW_VERSION_LABEL": "shadow"})
        settings = TrainerSettings(
            **common, **LENIENT_GATES, data_dir=str(base_data_set(tmp_path / "base")),
            gate_fraction=0.25,
            train_image_cache_dir=None, model_server_grpc=server.grpc_target,
            publish_wait_for_load_s=120, storage_backend="s3", s3_bucket=BUCKET,
            s3_prefix=PREFIX, s3_endpoint_url=s3_server.endpoint_url, s3_region="us-east-1")

        # Predictions from both clients, answered by version 1.
        views: dict[str, list[tuple[str, dict]]] = {}
        for client, films in FILMS.items():
            with gateway.client(client, timeout=90) as http:
                views[client] = [(truth, predicted_sample(http, truth, index))
                                 for truth, index in films]
        assert all(view["result"]["model"]["version"] == 1
                   for found in views.values() for _, view in found)

        # 2. Each site's reader gives the true label; the films land under confirmed/{site}/.
        for client, found in views.items():
            with gateway.client(client, timeout=60) as http:
                for truth, view in found:
                    response = http.post(view["links"]["feedback"], json={
                        "label": truth, "subtype": "viral" if truth == "PNEUMONIA" else None,
                        "reader": f"Reader of {SITES[client]}"})
                    assert response.status_code == 201, response.text
                    assert response.json()["feedback"]["client_id"] == client
        for client, found in views.items():
            site = SITES[client]
            stored = {f.job_id: f for f in confirmed_labels(storage, site)}
            assert set(stored) == {view["job_id"] for _, view in found}
            for truth, view in found:
                job_id = view["job_id"]
                assert (stored[job_id].label, stored[job_id].site) == (truth, site)
                assert storage.list(f"{confirmed_site_prefix(site)}{job_id}/") == sorted(
                    [confirmed_film_key(site, job_id, "image/jpeg"),
                     confirmed_label_key(site, job_id)])
                assert storage.get(confirmed_film_key(site, job_id, "image/jpeg")) == (
                    storage.get(f"uploads/{job_id}"))
        # Another client cannot give feedback on alice's job: it does not exist for bob.
        alice_job = views["alice"][0][1]["job_id"]
        with gateway.client("bob") as http:
            refused = http.post(f"/v1/predictions/{alice_job}/feedback",
                                json={"label": "PNEUMONIA", "reader": "Reader of south"})
        assert refused.status_code == 404 and refused.json()["code"] == "job_not_found"
        assert {f.job_id: f.label for f in confirmed_labels(storage, "north")}[alice_job] == (
            views["alice"][0][0])
        feedback_text = gateway.metrics_text()
        for client, found in views.items():
            assert sum(metric_value(feedback_text, "cxr_feedback_films_total",
                                    site=SITES[client], model_version="1",
                                    model_label=model_label, reader_label=reader_label)
                       for model_label in ("NORMAL", "PNEUMONIA")
                       for reader_label in ("NORMAL", "PNEUMONIA")) == len(found)

        # 3. Retraining reads both sites' confirmed films; the new version waits for approval.
        outcome = retrain(settings, train_overrides=SMOKE_TRAINING)
        dataset = outcome["dataset"]
        assert dataset["source"] == {"base": 35, "confirmed": 5}
        assert (dataset["site"]["north"], dataset["site"]["south"]) == (3, 2)
        # Per site and class as the readers said (their pneumonia verdicts were viral).
        wanted = Counter(f"confirmed/{SITES[c]}/{'normal' if truth == 'NORMAL' else 'viral'}"
                         for c, films in FILMS.items() for truth, _ in films)
        assert {k: n for k, n in dataset["source_site_class"].items()
                if k.startswith("confirmed/")} == dict(wanted)
        assert (outcome["version"], outcome["previous_champion"]) == (2, 1)
        assert (outcome["approval_state"], outcome["promoted"], outcome["published"]) == (
            "pending", False, None)
        registry = ModelRegistry(name)
        assert registry.champion() == 1 and registry.alias_version(CHALLENGER) == 2
        assert served(serving) == ([1], {"stable": 1})

        # 4. The challenger in shadow: alice's next film is answered by version 1, version 2's
        # output is stored apart.
        publish_shadow_registered(settings, 2, by="dr.grey")
        assert served(serving) == ([1, 2], {"stable": 1, "shadow": 2})
        wait_until(lambda: label_version(server.grpc_target, "shadow") == 2, 60,
                   "label shadow on version 2", server.process)
        with gateway.client("alice", timeout=90) as http:
            view = predicted_sample(http, "PNEUMONIA", 3)
            job_id = view["job_id"]
            assert view["result"]["model"]["version"] == 1
            wait_until(lambda: storage.exists(shadow_key(job_id)), 60, "shadow output stored")
            output = read_shadow(storage, job_id)
            assert output is not None and output.site == "north"
            assert (output.shadow.model.version, output.champion.model.version) == (2, 1)
            assert output.champion.label == view["result"]["label"]
            answer = http.get(f"/v1/predictions/{job_id}")
            assert answer.status_code == 200 and "shadow" not in answer.text
        assert "shadow" not in json.dumps(json.loads(storage.get(storage_key(job_id))))
        wait_for_metric(worker.metrics_text, "cxr_worker_shadow_predictions_total", 1,
                        version_label="shadow", outcome="stored")

        # 5. Approval publishes version 2 under stable; the next answer comes from it.
        approve(settings, 2, by="dr.grey", reason="gate figures and shadow outputs reviewed")
        assert registry.champion() == 2 and registry.alias_version(CHALLENGER) is None
        versions, labels = served(serving)
        assert labels == {"stable": 2} and 2 in versions
        wait_until(lambda: label_version(server.grpc_target, "stable") == 2, 60,
                   "label stable on version 2", server.process)
        with gateway.client("alice", timeout=90) as http:
            assert predicted_sample(http, "NORMAL", 3)["result"]["model"]["version"] == 2

        # 6. Drift against version 2's published reference: south's stream turns inverted (a
        # shift), north sends films like its own; the worker's check reads both windows.
        version_dir = serving / MODEL_NAME / "2"
        assert (serving / reference_key(MODEL_NAME, 2)).is_file()
        recorder = DriftRecorder(redis_client, max_films=100_000, window_s=7 * 86400)
        now = time.time()
        for site, invert in (("north", False), ("south", True)):
            recorder.record_many(site, [(f"{site}-drift-{i}", 2, stats, now - 1 - i)
                                        for i, stats in enumerate(
                                            site_statistics(version_dir, invert))])
        celery.send_task(DRIFT_CHECK_TASK, queue=INFERENCE_QUEUE)
        for site in ("north", "south"):
            wait_for_metric(worker.metrics_text, "cxr_drift_last_check_timestamp_seconds", 1,
                            timeout=60, site=site)
        text = worker.metrics_text()
        assert metric_value(text, "cxr_drift_alert", site="south") == 1, worker.log_tail()
        assert metric_value(text, "cxr_drift_alert", site="north") == 0, worker.log_tail()
        assert metric_value(text, "cxr_drift_films", site="north") >= 40
        ks = {site: {s.labels["statistic"]: s.value
                     for family in text_string_to_metric_families(text)
                     for s in family.samples if s.name == "cxr_drift_ks"
                     and s.labels["site"] == site} for site in ("north", "south")}
        threshold = float(DRIFT_ENV["CXR_DRIFT_KS_THRESHOLD"])
        assert max(ks["south"].values()) > threshold >= max(ks["north"].values()), ks
    finally:
        celery.close()
        for process in (worker, gateway):
            if process is not None:
                process.stop()
        server.stop()
