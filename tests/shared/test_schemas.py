"""Job record and result schemas: UTC timestamps, bounded probabilities, JSON round trips."""

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.jobs.records import JobRecord, JobStatus
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult


def _record(job_id="abc", **fields) -> JobRecord:
    return JobRecord(job_id=job_id, client_id="clinic", upload_key=f"uploads/{job_id}", **fields)


def test_new_records_are_queued_with_a_utc_creation_time():
    record = _record()
    assert record.status is JobStatus.QUEUED
    assert record.created_at.utcoffset() == timedelta(0)
    assert record.attempts == 0


def test_naive_timestamps_are_refused():
    with pytest.raises(ValidationError, match="timezone"):
        _record(created_at=datetime(2026, 1, 1, 12, 0))


def test_other_timezones_are_converted_to_utc():
    paris = timezone(timedelta(hours=1))
    record = _record(created_at=datetime(2026, 1, 1, 13, 0, tzinfo=paris))
    assert record.created_at.hour == 12
    assert record.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("job_id", ["", "a/b", "../x", "a b", "x" * 129])
def test_job_ids_that_are_unsafe_in_keys_are_refused(job_id):
    with pytest.raises(ValidationError):
        _record(job_id)


def test_probabilities_are_bounded():
    with pytest.raises(ValidationError):
        ClassProbabilities(normal=1.2, bacterial=0.0, viral=0.0)


def test_result_round_trips_through_json():
    result = PredictionResult(
        label="NORMAL", pneumonia_probability=0.1,
        class_probabilities=ClassProbabilities(normal=0.9, bacterial=0.06, viral=0.04),
        subtype=None, threshold=0.4, model=ModelRef(name="cxr-pneumonia", version=2),
        timings_ms={"total": 12.5},
    )
    record = _record(status=JobStatus.SUCCEEDED, result=result, extra={"SOPInstanceUID": "1.2"})
    assert JobRecord.model_validate_json(record.model_dump_json()) == record
    assert '"status":"succeeded"' in record.model_dump_json()


def test_label_and_status_values_are_closed_sets():
    with pytest.raises(ValidationError):
        _record(status="paused")
    with pytest.raises(ValidationError):
        _record(source="email")
    assert JobStatus.SUCCEEDED.finished and JobStatus.FAILED.finished
    assert not JobStatus.QUEUED.finished and not JobStatus.RUNNING.finished
