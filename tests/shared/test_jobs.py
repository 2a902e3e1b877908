"""JobStore on a real redis-server: records, state changes, recovery after Redis loses it all."""

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared.errors import (
    InvalidJobTransitionError,
    JobExistsError,
    JobNotFoundError,
    StorageError,
)
from shared.jobs.keys import (
    CLIENT_INDEX_PREFIX,
    client_index_key,
    client_index_prefix,
    open_marker_key,
    redis_key,
    storage_key,
)
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import IndexEntry, JobStore
from shared.schemas import ClassProbabilities, Failure, ModelRef, PredictionResult
from shared.storage import LocalStorage


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def store(redis_client, storage):
    return JobStore(redis_client, storage, ttl_seconds=3600)


def _record(job_id="job-1", **fields) -> JobRecord:
    return JobRecord(job_id=job_id, client_id="clinic-a", upload_key=f"uploads/{job_id}",
                     filename="chest.png", content_type="image/png", size_bytes=1234, **fields)


def _result() -> PredictionResult:
    return PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.91,
        class_probabilities=ClassProbabilities(normal=0.09, bacterial=0.7, viral=0.21),
        subtype="bacterial", threshold=0.42, model=ModelRef(name="cxr-pneumonia", version=3),
        timings_ms={"queue": 3.0, "decode": 5.0, "inference": 40.0, "heatmap": 20.0, "total": 70.0},
    )


def test_create_writes_both_copies(store, redis_client, storage):
    record = store.create(_record())
    assert store.get("job-1") == record
    assert JobRecord.model_validate_json(redis_client.get(redis_key("job-1"))) == record
    assert JobRecord.model_validate_json(storage.get(storage_key("job-1"))) == record
    assert 0 < redis_client.ttl(redis_key("job-1")) <= 3600


def test_create_refuses_an_existing_id(store, redis_client):
    store.create(_record())
    with pytest.raises(JobExistsError):
        store.create(_record())
    redis_client.flushall()  # known only to storage now
    with pytest.raises(JobExistsError):
        store.create(_record())


def test_unknown_and_malformed_ids_are_none(store):
    assert store.get("never-created") is None
    assert store.get("../../etc/passwd") is None
    with pytest.raises(JobNotFoundError):
        store.mark_running("never-created")


def test_full_life_of_a_job(store):
    store.create(_record())
    running = store.mark_running("job-1")
    assert running.status is JobStatus.RUNNING
    assert running.attempts == 1
    assert running.started_at is not None
    done = store.mark_succeeded("job-1", _result(), heatmap_key="heatmaps/job-1.png")
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == _result()
    assert done.heatmap_key == "heatmaps/job-1.png"
    assert done.finished_at >= done.started_at >= done.created_at
    assert store.get("job-1") == done


def test_a_retry_counts_attempts(store):
    store.create(_record())
    store.mark_running("job-1")
    assert store.mark_running("job-1").attempts == 2


def test_duplicate_delivery_of_a_finished_job_changes_nothing(store):
    store.create(_record())
    store.mark_running("job-1")
    done = store.mark_succeeded("job-1", _result())
    again = store.mark_running("job-1")
    assert again == done
    assert again.status.finished
    assert store.get("job-1").attempts == 1
    second_result = _result().model_copy(update={"pneumonia_probability": 0.5})
    assert store.mark_succeeded("job-1", second_result).result == _result()  # first one kept


def test_finished_jobs_do_not_change_outcome(store):
    store.create(_record("ok"))
    store.mark_succeeded("ok", _result())
    with pytest.raises(InvalidJobTransitionError):
        store.mark_failed("ok", Failure(code="not_an_image", message="..."))
    store.create(_record("bad"))
    failed = store.mark_failed("bad", Failure(code="not_an_image", message="Not an image."))
    assert failed.status is JobStatus.FAILED
    assert failed.failure.code == "not_an_image"
    again = store.mark_failed("bad", Failure(code="other", message="x"))
    assert again.failure.code == "not_an_image"  # the first reason is kept
    with pytest.raises(InvalidJobTransitionError):
        store.mark_succeeded("bad", _result())


def test_reads_fall_back_to_storage_after_redis_loses_everything(store, redis_client):
    store.create(_record())
    running = store.mark_running("job-1")
    redis_client.flushall()
    assert store.get("job-1") == running
    assert redis_client.exists(redis_key("job-1"))  # cached again
    redis_client.flushall()
    done = store.mark_succeeded("job-1", _result())  # updates work from the durable copy too
    assert done.attempts == 1
    redis_client.flushall()
    assert store.get("job-1") == done


def test_list_unfinished_reads_storage_oldest_first(store, redis_client, storage):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for index, job_id in enumerate(["q-late", "q-early", "running", "done", "failed"]):
        minutes = {"q-early": 0, "running": 1, "q-late": 2}.get(job_id, index)
        store.create(_record(job_id, created_at=base + timedelta(minutes=minutes)))
    store.mark_running("running")
    store.mark_succeeded("done", _result())
    store.mark_failed("failed", Failure(code="corrupt_image", message="Damaged."))
    storage.put("jobs/broken.json", b"{not json")
    storage.put("jobs/readme.txt", b"ignored")
    redis_client.flushall()
    unfinished = store.list_unfinished()
    assert [record.job_id for record in unfinished] == ["q-early", "running", "q-late"]
    assert [record.status for record in unfinished] == [JobStatus.QUEUED, JobStatus.RUNNING,
                                                         JobStatus.QUEUED]


def test_open_jobs_index_follows_the_record(store, storage):
    store.create(_record("job-1"))
    assert storage.list("jobs-open/") == ["jobs-open/job-1"]
    store.mark_running("job-1")
    assert storage.exists(open_marker_key("job-1"))
    store.mark_succeeded("job-1", _result())
    assert storage.list("jobs-open/") == []
    store.create(_record("job-2"))
    store.mark_failed("job-2", Failure(code="corrupt_image", message="Damaged."))
    assert storage.list("jobs-open/") == []


def test_the_in_flight_set_holds_accepted_jobs_until_they_finish(store):
    """Each write of an unfinished record moves its in-flight time forward; finishing removes it."""
    store.create(_record("job-1"))
    accepted = store.in_flight()["job-1"]
    assert abs(accepted - time.time()) < 5
    time.sleep(0.01)
    store.mark_running("job-1")
    started = store.in_flight()["job-1"]
    assert started > accepted
    time.sleep(0.01)
    assert store.requeue("job-1").status is JobStatus.RUNNING
    assert store.in_flight()["job-1"] > started
    store.mark_succeeded("job-1", _result())
    assert store.in_flight() == {}
    store.create(_record("job-2"))
    store.mark_failed("job-2", Failure(code="corrupt_image", message="Damaged."))
    store.create(_record("job-3"))
    store.delete("job-3")
    assert store.in_flight() == {}


def test_requeue_leaves_a_finished_job_alone_and_restores_a_lost_redis_copy(store, redis_client):
    store.create(_record("job-1"))
    store.mark_failed("job-1", Failure(code="corrupt_image", message="Damaged."))
    assert store.requeue("job-1").status is JobStatus.FAILED
    assert store.in_flight() == {}
    store.create(_record("job-2"))
    redis_client.flushall()  # Redis lost everything: record copy and in-flight entry
    assert store.in_flight() == {}
    assert store.requeue("job-2").status is JobStatus.QUEUED
    assert redis_client.exists(redis_key("job-2"))
    assert set(store.in_flight()) == {"job-2"}


def test_list_unfinished_reads_only_open_jobs_and_drops_stale_markers(store, redis_client,
                                                                       storage, monkeypatch):
    for job_id in ["open-1", "open-2", "done"]:
        store.create(_record(job_id))
    store.mark_succeeded("done", _result())
    storage.put(open_marker_key("done"), b"")  # a crash between the finish and the removal
    storage.put(open_marker_key("ghost"), b"")  # a create that never wrote its record
    redis_client.flushall()
    read = []
    real_get = storage.get
    monkeypatch.setattr(storage, "get", lambda key: read.append(key) or real_get(key))
    assert [r.job_id for r in store.list_unfinished()] == ["open-1", "open-2"]
    assert sorted(read) == [storage_key(j) for j in ["done", "ghost", "open-1", "open-2"]]
    assert storage.list("jobs-open/") == ["jobs-open/ghost", "jobs-open/open-1",
                                          "jobs-open/open-2"]


def test_scan_all_finds_records_without_a_marker_and_marks_them(store, redis_client, storage):
    store.create(_record("old-open"))
    store.create(_record("old-done"))
    store.mark_succeeded("old-done", _result())
    storage.delete(open_marker_key("old-open"))  # written before the index existed
    redis_client.flushall()
    assert store.list_unfinished() == []
    assert [r.job_id for r in store.list_unfinished(scan_all=True)] == ["old-open"]
    assert storage.list("jobs-open/") == ["jobs-open/old-open"]
    assert [r.job_id for r in store.list_unfinished()] == ["old-open"]


def test_concurrent_updates_are_not_lost(redis_url, storage):
    """Threads racing on one record: the WATCH transaction re-reads, so every attempt counts."""
    JobStore(redis.Redis.from_url(redis_url), storage).create(_record())
    errors = []

    def run_attempts():
        thread_store = JobStore(redis.Redis.from_url(redis_url), storage)
        try:
            for _ in range(10):
                thread_store.mark_running("job-1")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run_attempts) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert JobStore(redis.Redis.from_url(redis_url), storage).get("job-1").attempts == 40
    assert JobRecord.model_validate_json(storage.get(storage_key("job-1"))).attempts == 40


def test_save_overwrites_both_copies(store, redis_client, storage):
    store.create(_record())
    changed = store.get("job-1").model_copy(update={"extra": {"StudyInstanceUID": "1.2.3"}})
    store.save(changed)
    redis_client.flushall()
    assert store.get("job-1").extra == {"StudyInstanceUID": "1.2.3"}


class _StorageThatCannotWrite(LocalStorage):
    def put(self, key, data, content_type=None):
        raise StorageError("The disk is full.")


def test_create_leaves_nothing_behind_when_storage_fails(redis_client, tmp_path):
    failing = JobStore(redis_client, _StorageThatCannotWrite(tmp_path / "store"))
    with pytest.raises(StorageError):
        failing.create(_record())
    assert not redis_client.exists(redis_key("job-1"))
    assert failing.in_flight() == {}
    working = JobStore(redis_client, LocalStorage(tmp_path / "store"))
    assert working.create(_record()).job_id == "job-1"  # the id can be used again


class _RecordingStorage(LocalStorage):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.finished: list[str] = []

    def put(self, key, data, content_type=None):
        super().put(key, data, content_type)
        self.finished.append(key)


def test_create_writes_alongside_before_the_record(redis_client, tmp_path):
    storage = _RecordingStorage(tmp_path / "store")
    store = JobStore(redis_client, storage)
    upload = threading.Event()

    def write_upload():
        time.sleep(0.2)  # slower than the marker: the record must still wait for it
        storage.put("uploads/job-1", b"pixels")
        upload.set()

    record = store.create(_record(), alongside=write_upload)
    assert upload.is_set()
    assert storage.finished[-1] == storage_key("job-1")
    assert set(storage.finished[:-1]) == {"uploads/job-1", open_marker_key("job-1"),
                                          client_index_key(record)}


def test_a_failed_alongside_write_leaves_no_record(store, redis_client, storage):
    def fail():
        raise StorageError("The disk is full.")

    with pytest.raises(StorageError, match="disk is full"):
        store.create(_record(), alongside=fail)
    assert not redis_client.exists(redis_key("job-1"))
    assert not storage.exists(storage_key("job-1"))
    assert storage.list(CLIENT_INDEX_PREFIX) == []  # nor a listed job
    assert store.create(_record()).job_id == "job-1"  # the id can be used again


def test_mark_running_keeps_the_durable_copy_in_step_without_fsync(store, storage, monkeypatch):
    store.create(_record())
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.mark_running("job-1")
    assert synced == []
    assert JobRecord.model_validate_json(storage.get(storage_key("job-1"))).status is (
        JobStatus.RUNNING)


# --- the client index: lists, delete -------------------------------------------------------------
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _jobs_of(store, client, count, *, start=T0, status=JobStatus.QUEUED):
    made = []
    for i in range(count):
        record = JobRecord(job_id=f"{client}-{i:02d}", client_id=client, upload_key=f"uploads/{i}",
                           created_at=start + timedelta(minutes=i), status=status)
        made.append(store.create(record))
    return made


def test_a_client_lists_its_own_jobs_newest_first_page_by_page(store):
    mine = _jobs_of(store, "clinic-a", 5)
    _jobs_of(store, "clinic-b", 3)
    first = store.list_for_client("clinic-a", limit=2)
    assert [r.job_id for r in first.records] == ["clinic-a-04", "clinic-a-03"]
    second = store.list_for_client("clinic-a", limit=2, cursor=first.next_cursor)
    assert [r.job_id for r in second.records] == ["clinic-a-02", "clinic-a-01"]
    last = store.list_for_client("clinic-a", limit=2, cursor=second.next_cursor)
    assert [r.job_id for r in last.records] == ["clinic-a-00"] and last.next_cursor is None
    exact = store.list_for_client("clinic-a", limit=5)
    assert len(exact.records) == len(mine) and exact.next_cursor is None
    assert store.list_for_client("nobody", limit=5).records == []


def test_the_list_filters_by_creation_time_and_status(store):
    _jobs_of(store, "clinic-a", 6)
    store.mark_failed("clinic-a-01", Failure(code="x", message="y"))
    store.mark_failed("clinic-a-04", Failure(code="x", message="y"))
    window = store.list_for_client("clinic-a", limit=10, created_after=T0 + timedelta(minutes=2),
                                   created_before=T0 + timedelta(minutes=5))
    assert [r.job_id for r in window.records] == ["clinic-a-04", "clinic-a-03", "clinic-a-02"]
    failed = store.list_for_client("clinic-a", limit=1, status=JobStatus.FAILED)
    assert [r.job_id for r in failed.records] == ["clinic-a-04"]
    rest = store.list_for_client("clinic-a", limit=1, status=JobStatus.FAILED,
                                 cursor=failed.next_cursor)
    assert [r.job_id for r in rest.records] == ["clinic-a-01"]


def test_any_client_name_is_a_safe_index_folder(store, storage):
    for client in ("AE TITLE/1", "..", "x%2Fy"):
        record = store.create(JobRecord(job_id=f"j{len(client)}{ord(client[0])}", client_id=client,
                                        upload_key="uploads/x"))
        assert client_index_key(record).startswith(client_index_prefix(client))
        entry = IndexEntry.parse(client_index_key(record))
        assert entry is not None and entry.client == client and entry.job_id == record.job_id
        assert [r.job_id for r in store.list_for_client(client, limit=5).records] == [
            record.job_id]


def test_delete_forgets_the_record_everywhere(store, storage, redis_client):
    record = _jobs_of(store, "clinic-a", 1)[0]
    store.delete(record.job_id)
    assert store.get(record.job_id) is None
    assert not redis_client.exists(redis_key(record.job_id))
    assert storage.list("") == []  # record, open marker and index marker all gone
    store.delete(record.job_id)  # again: nothing left to do, no error


def test_index_entries_before_a_time_are_the_old_ones_of_every_client(store):
    _jobs_of(store, "clinic-a", 3)
    _jobs_of(store, "clinic-b", 2, start=T0 - timedelta(days=3))
    old = store.index_entries(created_before=T0)
    assert [(e.client, e.job_id) for e in old] == [("clinic-b", "clinic-b-00"),
                                                   ("clinic-b", "clinic-b-01")]
    assert len(store.index_entries()) == 5


def test_a_full_scan_gives_records_kept_before_the_client_index_their_markers(store, storage):
    old = _jobs_of(store, "clinic-a", 2)
    store.mark_failed(old[0].job_id, Failure(code="x", message="y"))
    for record in old:  # as kept before the index existed
        storage.delete(client_index_key(record))
    assert store.list_for_client("clinic-a", limit=5).records == []
    store.list_unfinished(scan_all=True)
    listed = store.list_for_client("clinic-a", limit=5).records
    assert [r.job_id for r in listed] == ["clinic-a-01", "clinic-a-00"]
