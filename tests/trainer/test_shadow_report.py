"""`python -m services.trainer shadow-report --version N`: a shadow version's agreement with the
readers' verdicts, beside the champion's on the same films (real Redis, local storage)."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from services.trainer.cli.main import main
from services.trainer.settings import get_settings
from shared.feedback import confirm
from shared.jobs.keys import shadow_key
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult, ReaderFeedback, utc_now
from shared.shadow import ShadowAnswer, ShadowOutput
from shared.storage import LocalStorage

PROBABILITIES = ClassProbabilities(normal=0.5, bacterial=0.3, viral=0.2)


def answer(version: int, label: str) -> ShadowAnswer:
    return ShadowAnswer(model=ModelRef(name="cxr-pneumonia", version=version), label=label,
                        pneumonia_probability=0.5, threshold=0.4)


def answered_job(store: JobStore, storage: LocalStorage, site: str, champion_label: str) -> str:
    job_id = uuid.uuid4().hex
    storage.put(f"uploads/{job_id}", b"\xff\xd8 film bytes")
    store.create(JobRecord(job_id=job_id, client_id="tests", upload_key=f"uploads/{job_id}",
                           size_bytes=12, content_type="image/jpeg", site=site))
    store.mark_running(job_id)
    store.mark_succeeded(job_id, PredictionResult(
        label=champion_label, pneumonia_probability=0.5, class_probabilities=PROBABILITIES,
        subtype="bacterial" if champion_label == "PNEUMONIA" else None, threshold=0.4,
        model=ModelRef(name="cxr-pneumonia", version=1)))
    return job_id


def store_shadow(storage: LocalStorage, job_id: str, site: str, version: int, shadow_label: str,
                 champion_label: str) -> None:
    output = ShadowOutput(job_id=job_id, site=site, shadow=answer(version, shadow_label),
                          class_probabilities=PROBABILITIES, champion=answer(1, champion_label),
                          scored_at=utc_now(), inference_ms=3.0)
    storage.put(shadow_key(job_id), output.model_dump_json().encode())


@pytest.fixture
def report_env(redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_REDIS_URL", redis_url)
    monkeypatch.setenv("CXR_STORAGE_BACKEND", "local")
    monkeypatch.setenv("CXR_STORAGE_ROOT", str(tmp_path / "storage"))
    get_settings.cache_clear()
    yield LocalStorage(tmp_path / "storage")
    get_settings.cache_clear()


def test_shadow_report_counts_agreement_with_the_readers(report_env, redis_url, capsys):
    storage = report_env
    store = JobStore(redis.Redis.from_url(redis_url), storage)
    # (site, reader label or None, shadow version 2's label, champion's label)
    films = [("north", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA"),
             ("north", "PNEUMONIA", "NORMAL", "PNEUMONIA"),
             ("south", "NORMAL", "NORMAL", "PNEUMONIA"),
             ("south", "NORMAL", "NORMAL", "NORMAL"),
             ("south", None, "NORMAL", "NORMAL")]
    for site, reader, shadow, champion in films:
        job_id = answered_job(store, storage, site, champion)
        store_shadow(storage, job_id, site, 2, shadow, champion)
        if reader is not None:
            confirm(storage, store, job_id, ReaderFeedback(label=reader, reader="r1"), "tests")
    other = answered_job(store, storage, "north", "NORMAL")  # another shadow version's output
    store_shadow(storage, other, "north", 3, "PNEUMONIA", "NORMAL")
    confirm(storage, store, other, ReaderFeedback(label="PNEUMONIA", reader="r1"), "tests")

    assert main(["shadow-report", "--version", "2"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert (report["version"], report["scored"], report["reviewed"]) == (2, 5, 4)
    assert report["agrees_with_champion"] == 3
    shadow, champion = report["shadow_vs_readers"], report["champion_vs_readers"]
    assert (shadow["agree"], shadow["agreement"]) == (3, 0.75)
    assert (shadow["sensitivity"], shadow["specificity"]) == (0.5, 1.0)
    assert (champion["agree"], champion["sensitivity"], champion["specificity"]) == (3, 1.0, 0.5)
    by_site = report["shadow_vs_readers_by_site"]
    assert (by_site["north"]["agree"], by_site["north"]["pneumonia"]) == (1, 2)
    assert (by_site["south"]["agree"], by_site["south"]["normal"]) == (2, 2)
