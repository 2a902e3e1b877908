"""What the worker keeps of an answered film for monitoring: the input's source (upload, STOW-RS,
C-STORE), its kind and size in the metrics, its drift record; and that none of it can fail a job."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import redis
from prometheus_client import REGISTRY

from services.worker.job import FilmFacts, input_source, observe_film
from shared.contract import PNEUMONIA_PROBABILITY
from shared.dicom_intake.receive import DicomIntake
from shared.drift import MEAN_INTENSITY, PROBABILITY, DriftRecorder
from shared.imaging import DecodeLimits
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult
from shared.storage import LocalStorage
from tests.shared.test_job_sites import Queue
from tests.shared.xray_files import xray_dataset


def test_the_source_is_upload_stow_rs_or_c_store(redis_url, tmp_path):
    storage = LocalStorage(tmp_path)
    jobs = JobStore(redis.Redis.from_url(redis_url), storage)
    intake = DicomIntake(storage=storage, jobs=jobs, queue=Queue(), limits=DecodeLimits())
    pixels = (np.arange(256 * 256).reshape(256, 256) % 4096).astype(np.uint16)
    for route in ("stow-rs", "c-store"):
        record = jobs.get(intake.receive(xray_dataset(pixels), client="sender",
                                         route=route).job_id)
        assert input_source(record) == route
    upload = JobRecord(job_id="j1", client_id="alice", upload_key="uploads/j1", size_bytes=10)
    assert input_source(upload) == "upload"


def _answer(site: str) -> tuple[JobRecord, PredictionResult, FilmFacts]:
    record = JobRecord(job_id="job-42", client_id="alice", upload_key="uploads/job-42",
                       size_bytes=10, site=site)
    result = PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.9, threshold=0.5,
        class_probabilities=ClassProbabilities(normal=0.1, bacterial=0.6, viral=0.3),
        model=ModelRef(name="cxr-pneumonia", version=3))
    image = np.full((224, 224, 1), 51, dtype=np.uint8)
    facts = FilmFacts(image, {PNEUMONIA_PROBABILITY: np.array([0.8], dtype=np.float32)},
                      "png", 16, 2048, 1536)
    return record, result, facts


def _count(site: str) -> float:
    return REGISTRY.get_sample_value("cxr_worker_input_films_total", {
        "site": site, "source": "upload", "format": "png", "bit_depth": "16"}) or 0.0


def test_an_answered_film_is_counted_and_recorded(redis_url):
    client = redis.Redis.from_url(redis_url)
    recorder = DriftRecorder(client, max_films=10, window_s=3600)
    deps = SimpleNamespace(drift_recorder=lambda: recorder)
    record, result, facts = _answer("monitored")
    before = _count("monitored")
    observe_film(record, result, facts, deps)
    assert _count("monitored") == before + 1
    assert REGISTRY.get_sample_value("cxr_worker_input_side_pixels_sum",
                                     {"site": "monitored", "side": "width"}) >= 2048
    window = recorder.window("monitored")
    assert (window.version, window.films) == (3, 1)
    # The model's own probability (0.8), not the site's answer (0.9); the input's mean 51/255.
    assert window.column(PROBABILITY).tolist() == [np.float32(0.8)]
    assert window.column(MEAN_INTENSITY).tolist() == [np.float32(0.2)]
    client.close()


def test_a_record_that_fails_is_logged_and_the_job_goes_on(caplog):
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    deps = SimpleNamespace(
        drift_recorder=lambda: DriftRecorder(unreachable, max_films=10, window_s=3600))
    record, result, facts = _answer("offline")
    with caplog.at_level(logging.ERROR, logger="services.worker.job"):
        observe_film(record, result, facts, deps)  # no exception
    assert "could not record its drift statistics" in caplog.text
    assert _count("offline") == 1


def test_the_drift_check_command_prints_each_site(redis_url, monkeypatch, capsys):
    import json
    import time
    from pathlib import Path

    from services.worker.__main__ import main
    from services.worker.settings import get_settings
    from shared.drift import DriftReference, reference_key

    models = Path(__file__).resolve().parents[2] / "models"
    bundled = max(int(p.name) for p in (models / "cxr-pneumonia").iterdir() if p.name.isdigit())
    reference = DriftReference.from_json(
        LocalStorage(models).get(reference_key("cxr-pneumonia", bundled)))
    # The reference's own films, recorded as a site's: no drift at all.
    films = [{name: float(stat.values[i]) for name, stat in reference.statistics.items()}
             for i in range(reference.films)]
    client = redis.Redis.from_url(redis_url)
    DriftRecorder(client, max_films=1000, window_s=3600).record_many(
        "twin", [(f"twin-{i}", bundled, film, time.time() - 60) for i, film in enumerate(films)])
    monkeypatch.setenv("CXR_REDIS_URL", redis_url)
    monkeypatch.setenv("CXR_MODEL_BASE_PATH", str(models))
    get_settings.cache_clear()
    try:
        assert main(["drift-check"]) == 0
    finally:
        get_settings.cache_clear()
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert (line["site"], line["version"], line["films"], line["alert"]) == (
        "twin", bundled, 524, False)
    assert max(line["ks"].values()) == 0.0
    client.close()
