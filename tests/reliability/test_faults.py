"""Faults under load, with every job counted: a worker SIGKILLed mid-job, the model server
restarted, Redis restarted empty, a new model version published.

The scenarios share one stack of real processes for the module (starting TensorFlow processes is
the slow part): a redis-server of its own with nothing kept on disk, the model server serving a
tiny model made by the trainer's export code, and Celery worker processes (prefork, 2 pool
processes). Jobs go in as the gateway makes them: `shared.jobs.intake.submit_job` through
`JobQueue` (the task id is the job id). Each scenario waits until every job it sent is finished,
then counts:

- lost: sent and not finished when the scenario stops waiting (the worker-kill and Redis scenarios
  run the reconciler meanwhile, as a deployment runs it periodically);
- duplicated: a job whose prediction ran to its end more than once (two `succeeded` task returns
  for its task id in the worker logs), or whose stored result object is not the result its record
  holds (written again after the job had finished);
- retried: jobs whose record shows more than one start (`attempts`: Celery retries and
  redeliveries alike).

The counts are printed at the end of the run (`tests/reliability/conftest.py`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import redis

from services.worker.reconcile import reconcile
from shared.errors import ObjectNotFoundError
from shared.imaging import decode_xray
from shared.jobs.intake import new_job_id, submit_job
from shared.jobs.keys import attention_key, result_key, storage_key
from shared.jobs.queue import JobQueue
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.schemas import utc_now
from shared.settings import SharedSettings
from shared.storage import LocalStorage
from tests.support.model_server import MODEL_NAME, ModelServer
from tests.support.redis import RedisServer, start_redis
from tests.support.worker import CeleryWorker, start_celery_worker
from tests.worker.jobs import xray_jpeg

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

# Settings of every worker in the module. Redis gives a SIGKILLed worker's unacked messages to
# another consumer once the visibility timeout has passed; the worker refuses a timeout that does
# not outlast the hard time limit plus the longest retry countdown, so those are short too. Enough
# retries to outlast a model server restart (TensorFlow import included) on a busy machine.
WORKER_ENV = {
    "CXR_TASK_SOFT_TIME_LIMIT_S": "10",
    "CXR_TASK_TIME_LIMIT_S": "12",
    "CXR_RETRY_BACKOFF_MAX_S": "4",
    "CXR_BROKER_VISIBILITY_TIMEOUT_S": "20",
    "CXR_JOB_LOCK_TTL_S": "20",
    "CXR_TASK_MAX_RETRIES": "300",
    "CXR_JOB_MAX_ATTEMPTS": "400",
    "CXR_PREDICT_TIMEOUT_S": "5",
}
WORKER_CONCURRENCY = 2
FINISH_TIMEOUT_S = 300.0
FILMS = tuple(xray_jpeg(seed=seed) for seed in range(4))

# Celery's log line for a task that returned; `predict` returns the job's outcome.
TASK_RETURNED = re.compile(
    r"Task cxr\.predict\[(?P<task_id>[^\]]+)\] succeeded in [0-9.e+-]+s: (?P<value>.*)$", re.M)


class Intake:
    """Makes jobs the way the gateway does: blob, then record, then the task (task id = job id)."""

    def __init__(self, redis_url: str, storage: LocalStorage) -> None:
        self.storage = storage
        self.jobs = JobStore(redis.Redis.from_url(redis_url), storage)
        self.queue = JobQueue(SharedSettings(redis_url=redis_url))

    def submit(self, index: int) -> str:
        data = FILMS[index % len(FILMS)]
        job_id = new_job_id()
        submit_job(self.storage, self.jobs, self.queue, job_id=job_id, client="reliability",
                   data=data, filename=f"film-{index}.jpeg", decoded=decode_xray(data))
        return job_id

    def close(self) -> None:
        self.queue.close()


@dataclass
class Stack:
    root: Path
    redis: RedisServer
    model_server: ModelServer
    storage: LocalStorage
    version: int = 1  # the version the model server serves now
    workers: list[CeleryWorker] = field(default_factory=list)
    intakes: list[Intake] = field(default_factory=list)

    def start_worker(self) -> CeleryWorker:
        worker = start_celery_worker(
            self.root / "workers", name=f"worker{len(self.workers)}", redis_url=self.redis.url,
            storage_root=self.storage.root, model_server_target=self.model_server.grpc_target,
            env=WORKER_ENV, concurrency=WORKER_CONCURRENCY)
        self.workers.append(worker)
        return worker

    def running_worker(self) -> CeleryWorker:
        """The live worker, started when an earlier scenario left none."""
        if self.workers and self.workers[-1].process.alive():
            return self.workers[-1]
        return self.start_worker()

    def intake(self) -> Intake:
        intake = Intake(self.redis.url, self.storage)
        self.intakes.append(intake)
        return intake

    def store(self) -> JobStore:
        return JobStore(self.redis.client(), self.storage)

    def worker_logs(self) -> str:
        return "\n".join(worker.process.log_path.read_text(errors="replace")
                         for worker in self.workers)

    def durable_record(self, job_id: str) -> JobRecord:
        """The record as storage holds it (what survives Redis)."""
        return JobRecord.model_validate_json(self.storage.get(storage_key(job_id)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    redis_server = start_redis(root / "redis")
    model_server = ModelServer(root / "models", root / "model-server")
    built = Stack(root, redis_server, model_server, LocalStorage(root / "storage"))
    try:
        model_server.publish(1)
        # Both import TensorFlow: start them side by side (the worker connects to gRPC lazily).
        loading = threading.Thread(target=model_server.start, kwargs={"wait_for": 1})
        loading.start()
        try:
            built.start_worker()
        finally:
            loading.join()
        # The thread's own failure is only printed; this raises with the server's log instead.
        model_server.wait_for_version(1, timeout=60)
        yield built
    finally:
        for intake in built.intakes:
            intake.close()
        for worker in built.workers:
            worker.stop()
        model_server.stop()
        redis_server.process.stop()


class Producer(threading.Thread):
    """Sends one job every `interval_s` until `finish()` or `limit` jobs, as clients keep doing."""

    def __init__(self, intake: Intake, interval_s: float, limit: int) -> None:
        super().__init__(name="producer", daemon=True)
        self.intake = intake
        self.interval_s = interval_s
        self.limit = limit
        self.job_ids: list[str] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and len(self.job_ids) < self.limit:
            try:
                self.job_ids.append(self.intake.submit(len(self.job_ids)))
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            self.halt.wait(self.interval_s)

    def finish(self) -> list[str]:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the producer did not stop"
        assert not self.errors, f"the intake refused jobs: {self.errors[:3]}"
        return list(self.job_ids)


# ---------------------------------------------------------------------------------------------
# Waiting and counting


def snapshot(store: JobStore, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
    return {job_id: store.get(job_id) for job_id in job_ids}


def count_status(records: dict[str, JobRecord | None], status: JobStatus,
                 version: int | None = None) -> int:
    return sum(1 for record in records.values()
               if record is not None and record.status is status
               and (version is None or (record.result and record.result.model.version == version)))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s\n{stack.workers[-1].log_tail()}")
        time.sleep(0.05)


def wait_finished(store: JobStore, job_ids: list[str],
                  timeout: float = FINISH_TIMEOUT_S) -> dict[str, JobRecord | None]:
    """The records once all are finished, or as they are when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        records = snapshot(store, job_ids)
        done = all(record is not None and record.status.finished for record in records.values())
        if done or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def task_returns(worker_logs: str) -> Counter[str]:
    """How many times each task returned, whatever the outcome (task id = job id)."""
    return Counter(match["task_id"] for match in TASK_RETURNED.finditer(worker_logs))


def finish_with_reconciler(stack: Stack, intake: Intake, job_ids: list[str]
                           ) -> tuple[dict[str, JobRecord | None], Counter[str]]:
    """Wait for `job_ids` to finish while the reconciler runs every 10 s, as a periodic job would
    (`python -m services.worker reconcile`, stale after the visibility timeout, its default): it
    sends again each unfinished job older than 5 s that Redis no longer knows, and each one that
    has not moved for the visibility timeout. Returns the records and the re-sends."""
    store = stack.store()
    stale_after_s = float(WORKER_ENV["CXR_BROKER_VISIBILITY_TIMEOUT_S"])
    requeued: Counter[str] = Counter()
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    while True:
        requeued.update(reconcile(store, intake.queue.enqueue, stale_after_s=stale_after_s,
                                  min_age_s=5))
        records = wait_finished(store, job_ids, timeout=10)
        finished = all(r is not None and r.status.finished for r in records.values())
        if finished or time.monotonic() > deadline:
            return records, requeued


def completed_runs(worker_logs: str) -> Counter[str]:
    """How many times each task ran to a `succeeded` outcome (task id = job id)."""
    return Counter(match["task_id"] for match in TASK_RETURNED.finditer(worker_logs)
                   if match["value"].rstrip(">").endswith("'succeeded'"))


def stored_result_is_the_recorded_one(storage: LocalStorage, record: JobRecord) -> bool:
    """A succeeded job's result object holds the result its record kept (the first one), and its
    Grad-CAM map is stored beside it."""
    try:
        stored = json.loads(storage.get(result_key(record.job_id)))
        storage.get(attention_key(record.job_id))  # the heatmap's source, kept with the result
    except ObjectNotFoundError:
        return False
    return stored == json.loads(record.result.model_dump_json())


@dataclass
class Counts:
    scenario: str
    sent: int
    succeeded: int
    failed: int
    lost: int
    duplicated: int
    retried: int
    notes: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, object]:
        row = asdict(self)
        return {**{k: v for k, v in row.items() if k != "notes"}, **self.notes}


def count_jobs(scenario: str, stack: Stack, records: dict[str, JobRecord | None],
               **notes: int) -> tuple[Counts, list[str]]:
    """The scenario's counts, and a line per job that is not succeeded exactly once."""
    runs = completed_runs(stack.worker_logs())
    problems, duplicated = [], 0
    for job_id, record in records.items():
        if record is None or not record.status.finished:
            problems.append(f"lost {job_id}: {record}")
        elif record.status is JobStatus.FAILED:
            problems.append(f"failed {job_id}: {record.failure}")
        if runs[job_id] > 1 or (record is not None and record.status is JobStatus.SUCCEEDED
                                and not stored_result_is_the_recorded_one(stack.storage, record)):
            duplicated += 1
            problems.append(f"duplicated {job_id}: {runs[job_id]} completed runs, {record}")
    counts = Counts(
        scenario=scenario,
        sent=len(records),
        succeeded=count_status(records, JobStatus.SUCCEEDED),
        failed=count_status(records, JobStatus.FAILED),
        lost=sum(1 for r in records.values() if r is None or not r.status.finished),
        duplicated=duplicated,
        retried=sum(1 for r in records.values() if r is not None and r.attempts > 1),
        notes=notes,
    )
    log.info("fault scenario counts: %s", counts.row())
    return counts, problems


def assert_exactly_once(counts: Counts, problems: list[str], stack: Stack) -> None:
    detail = "\n".join(problems[:10]) + "\n" + stack.workers[-1].log_tail()
    assert (counts.succeeded, counts.failed, counts.lost, counts.duplicated) == (
        counts.sent, 0, 0, 0), f"{counts.row()}\n{detail}"


# ---------------------------------------------------------------------------------------------
# Scenarios


def test_worker_sigkilled_mid_jobs_every_job_succeeds_once(stack, fault_report):
    # The jobs wait in the queue while no worker runs, so the next worker takes them back to back
    # and a look at the store can find one running (the tiny model answers in milliseconds).
    stack.running_worker().stop()
    intake = stack.intake()
    store = stack.store()
    job_ids = [intake.submit(index) for index in range(100)]
    worker = stack.start_worker()

    def some_done_and_some_running() -> bool:
        records = snapshot(store, job_ids)
        return (count_status(records, JobStatus.SUCCEEDED) >= 10
                and count_status(records, JobStatus.RUNNING) >= 1)

    # The tiny model answers in milliseconds, so the job seen running may finish between the look
    # and the kill; then the kill is tried again on a new worker (at most 3 kills).
    for _kill in range(3):
        wait_for(some_done_and_some_running, 180, "10 jobs succeeded and one running", stack)
        worker.kill()  # the main process and its pool, with SIGKILL: nothing acked or given back
        # Nothing runs now: storage shows what the kill interrupted.
        at_kill = {job_id: stack.durable_record(job_id) for job_id in job_ids}
        # The store writes the disk copy first, then commits Redis (`JobStore._update`), so a kill
        # between the two leaves the disk one step ahead. Interrupted: both copies say the job
        # started and neither that it finished. A start on disk only never committed (the next
        # delivery starts it as its first attempt: it was still queued); a finish in Redis only
        # is answered from there and no later delivery runs it again.
        served = snapshot(store, job_ids)
        interrupted = [j for j, record in at_kill.items() if record.status is JobStatus.RUNNING
                       and served[j].status is JobStatus.RUNNING]
        finished_before = [j for j, record in at_kill.items() if record.status.finished]
        worker = stack.start_worker()
        if interrupted:
            break
    assert interrupted, "three kills interrupted no job"

    # A message the killed worker had popped from the queue but not yet acknowledged may be gone
    # from the broker: the reconciler finds that job by the store's in-flight set.
    records, requeued = finish_with_reconciler(stack, intake, job_ids)
    sent_again = 0
    if all(r is not None and r.status.finished for r in records.values()):
        # At-least-once delivery: every finished job's task arrives once more (as after a
        # visibility timeout that expired on a slow task); each must be recognised, writing nothing.
        returns_before = task_returns(stack.worker_logs())
        for job_id in job_ids:
            intake.queue.enqueue(job_id)
        sent_again = len(job_ids)
        wait_for(lambda: all(task_returns(stack.worker_logs())[job_id] > returns_before[job_id]
                             for job_id in job_ids), 120, "the tasks sent again ran", stack)

    counts, problems = count_jobs(
        "worker SIGKILL", stack, records, finished_before_kill=len(finished_before),
        running_at_kill=len(interrupted),
        queued_at_kill=len(job_ids) - len(finished_before) - len(interrupted),
        requeued_by_reconciler=len(requeued), delivered_again_after_finish=sent_again)
    fault_report(counts.row())
    assert_exactly_once(counts, problems, stack)
    # The interrupted jobs were delivered again (by the visibility timeout) and started again.
    assert all(records[job_id].attempts >= 2 for job_id in interrupted), [
        records[job_id] for job_id in interrupted]


def test_model_server_restarted_under_load_jobs_retry_to_success(stack, fault_report):
    stack.running_worker()
    store = stack.store()
    producer = Producer(stack.intake(), interval_s=1.0, limit=30)
    producer.start()
    wait_for(lambda: count_status(snapshot(store, producer.job_ids), JobStatus.SUCCEEDED) >= 4,
             120, "4 jobs succeeded before the model server stops", stack)

    stopped_at = utc_now()
    stack.model_server.stop()
    time.sleep(3)
    stack.model_server.start(wait_for=stack.version)  # same ports
    back_at = utc_now()
    producer.join(60)  # clients keep sending until their 30 jobs are in
    job_ids = producer.finish()

    records = wait_finished(store, job_ids)
    counts, problems = count_jobs(
        "model server restart", stack, records,
        down_s=round((back_at - stopped_at).total_seconds()),
        sent_while_down=sum(1 for r in records.values()
                            if r is not None and stopped_at <= r.created_at <= back_at),
        attempts_total=sum(r.attempts for r in records.values() if r is not None))
    fault_report(counts.row())
    assert_exactly_once(counts, problems, stack)
    assert counts.retried >= 1, "no job met the stopped model server"
    assert {r.result.model.version for r in records.values()} == {stack.version}


def test_redis_restarted_empty_reconciler_requeues_from_storage(stack, fault_report):
    worker = stack.running_worker()
    intake = stack.intake()
    store = stack.store()
    before = [intake.submit(index) for index in range(10)]
    wait_for(lambda: count_status(snapshot(store, before), JobStatus.SUCCEEDED) >= 5, 180,
             "5 jobs succeeded before Redis restarts", stack)

    # The worker and its pool are held (some jobs mid-job) and 20 more jobs are sent while it is
    # held, so that jobs are still open when Redis goes however fast this machine works.
    worker.process.kill(signal.SIGSTOP)
    try:
        held = [intake.submit(index) for index in range(10, 30)]
        stack.redis.restart(stack.root / "redis")  # no persistence: queue, unacked, records gone
    finally:
        worker.process.kill(signal.SIGCONT)
    before += held
    lost_from_redis = [job_id for job_id in before
                       if not stack.durable_record(job_id).status.finished]
    assert set(held) <= set(lost_from_redis), "a job sent while the worker was held had finished"

    after, refused = [], 0
    for index in range(30, 40):  # clients go on sending; one that is refused sends again
        for _try in range(5):
            try:
                after.append(intake.submit(index))
                break
            except Exception as exc:  # noqa: BLE001 - a refused job is not accepted: retried
                refused += 1
                log.info("job refused right after the Redis restart (%s); sending again", exc)
                time.sleep(1)

    job_ids = before + after
    records, requeued = finish_with_reconciler(stack, intake, job_ids)
    counts, problems = count_jobs(
        "Redis restart", stack, records, lost_from_redis=len(lost_from_redis),
        requeued_by_reconciler=len(requeued), sent_after_restart=len(after),
        refused_after_restart=refused,
        sent_after_restart_requeued=len(set(requeued) & set(after)))
    fault_report(counts.row())
    assert_exactly_once(counts, problems, stack)
    assert requeued, "the reconciler sent nothing again"
    assert set(requeued) <= set(lost_from_redis) | set(after), requeued


def test_new_model_version_published_under_load_switches_without_failures(stack, fault_report):
    stack.running_worker()
    store = stack.store()
    old, new = stack.version, stack.version + 1
    staged = stack.root / f"staging-{new}"
    from tests.support.tiny_model import make_tiny_serving_model  # TensorFlow: import late

    make_tiny_serving_model(staged, new, seed=new)  # made aside, then copied in (not atomic)
    producer = Producer(stack.intake(), interval_s=0.5, limit=150)
    producer.start()
    wait_for(lambda: count_status(snapshot(store, producer.job_ids), JobStatus.SUCCEEDED,
                                  version=old) >= 5,
             120, f"5 jobs answered by version {old}", stack)

    # A deployment copies the new version folder in; the server polls the base path.
    shutil.copytree(staged / MODEL_NAME / str(new), stack.model_server.base_path / MODEL_NAME /
                    str(new))
    wait_for(lambda: count_status(snapshot(store, producer.job_ids), JobStatus.SUCCEEDED,
                                  version=new) >= 8,
             180, f"8 jobs answered by version {new}", stack)
    job_ids = producer.finish()
    stack.version = new

    records = wait_finished(store, job_ids)
    by_version = Counter(r.result.model.version for r in records.values()
                         if r is not None and r.result is not None)
    succeeded = [r for r in records.values() if r is not None and r.status is JobStatus.SUCCEEDED]
    first_new_answer: datetime = min(r.finished_at for r in succeeded
                                     if r.result.model.version == new)
    # An attempt that started after a job had its answer from the new version never gets the
    # old one: the switch happens once.
    old_after_switch = [r for r in succeeded
                        if r.result.model.version == old and r.started_at > first_new_answer]
    counts, problems = count_jobs(
        "new model version", stack, records, answered_by_old=by_version[old],
        answered_by_new=by_version[new], old_after_switch=len(old_after_switch))
    fault_report(counts.row())
    assert_exactly_once(counts, problems, stack)
    assert set(by_version) == {old, new}, by_version
    assert old_after_switch == [], old_after_switch
