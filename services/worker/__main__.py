"""Operator commands: `python -m services.worker COMMAND`: `reconcile`, `dead-letters`,
`requeue-dead-letters`, `purge`, `drift-check`.

The worker itself runs as `celery -A services.worker.celery_app worker -Q inference`.

`reconcile` re-queues accepted jobs left behind (services/worker/reconcile.py): it runs one pass
and exits 0 when the pass finished (whether or not it sent anything),
1 when Redis, the broker or storage was unreachable (one line on stderr; the pass is safe to run
again), 2 on bad arguments. `reconcile --every SECONDS` repeats the pass until SIGTERM or SIGINT,
then exits 0; a failed pass is logged and tried again at the next tick.

`purge` runs one retention pass now (what Celery beat sends as `cxr.purge`): every job created
more than `CXR_RETENTION_DAYS` days ago is erased; it prints `{"purged": [job ids]}`.

`drift-check` runs one drift check now (what Celery beat sends as `cxr.drift_check`,
`docs/monitoring.md`) and prints one JSON line per compared site.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from services.worker import dead_letter
from services.worker.reconcile import UNAVAILABLE, PassResult, reconcile_pass, run_periodically
from services.worker.settings import WorkerSettings, get_settings
from shared.jobs.queue import JobQueue
from shared.jobs.store import JobStore
from shared.redis_clients import redis_client
from shared.storage import get_storage

log = logging.getLogger("services.worker.reconcile")

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
# A command waits this long for Redis before the pass counts as failed (not forever on a dead host).
REDIS_CONNECT_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 30.0


def send_predict(job_id: str) -> None:
    """Re-queue a job exactly as intake queues it (`shared.jobs.queue.enqueue_predict`)."""
    queue = JobQueue(get_settings())
    try:
        queue.enqueue(job_id)
    finally:
        queue.close()


def stale_after_floor_s(settings: WorkerSettings) -> int:
    """What `--stale-after-s` must exceed: the longest a job can go without moving while a worker
    still holds it (its hard time limit, then its longest retry countdown)."""
    return settings.task_time_limit_s + settings.retry_backoff_max_s


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reconcile", help="re-queue unfinished jobs the broker lost")
    run.add_argument(
        "--min-age-s",
        type=float,
        default=60.0,
        help="leave younger jobs that Redis does not know alone (their task may not be sent "
             "yet)",
    )
    run.add_argument(
        "--stale-after-s",
        type=positive_seconds,
        help="send again an unfinished job that has not moved (accepted, started, re-queued) for "
             "this long (default: CXR_BROKER_VISIBILITY_TIMEOUT_S; at least "
             "CXR_TASK_TIME_LIMIT_S + CXR_RETRY_BACKOFF_MAX_S)",
    )
    run.add_argument(
        "--scan-all",
        action="store_true",
        help="read every job record in storage, not only the open-jobs index (once, for records "
             "kept before the indexes existed: also writes their client-index markers); with "
             "--every, only the first pass scans all",
    )
    run.add_argument(
        "--every",
        type=positive_seconds,
        metavar="SECONDS",
        help="keep running: a pass every SECONDS until SIGTERM (default: one pass, then exit)",
    )
    run.add_argument(
        "--heartbeat-file",
        type=Path,
        metavar="PATH",
        help="with --every: touched after each pass that finished, removed on exit "
             "(for a health check)",
    )
    commands.add_parser("dead-letters", help="print the dead-letter list as JSON lines")
    requeue = commands.add_parser("requeue-dead-letters", help="send dead-lettered jobs again")
    requeue.add_argument("--job-id", help="only this job (default: every entry)")
    commands.add_parser("purge", help="erase the jobs older than CXR_RETENTION_DAYS now")
    commands.add_parser("drift-check", help="compare every site's recent films with the served "
                        "model's reference now")
    return parser


def reconcile_forever(jobs: JobStore, args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    heartbeat: Path | None = args.heartbeat_file
    scan_all = [args.scan_all]  # until a pass has finished

    def touch(result: PassResult) -> None:
        scan_all[0] = False
        if heartbeat is not None:
            heartbeat.touch()

    log.info("reconciling every %g s (jobs still for %g s, or unknown to Redis and older than "
             "%g s)", args.every, args.stale_after_s, args.min_age_s)
    try:
        passes = run_periodically(
            lambda: reconcile_pass(jobs, send_predict, stale_after_s=args.stale_after_s,
                                   min_age_s=args.min_age_s, scan_all=scan_all[0]),
            args.every, stop, on_success=touch)
    finally:
        if heartbeat is not None:
            with contextlib.suppress(FileNotFoundError):
                heartbeat.unlink()
    log.info("stopped after %d passes", passes)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "reconcile" and args.heartbeat_file and args.every is None:
        parser.error("--heartbeat-file needs --every")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    if args.command == "reconcile":
        if args.stale_after_s is None:
            args.stale_after_s = float(settings.broker_visibility_timeout_s)
        if args.stale_after_s <= stale_after_floor_s(settings):
            parser.error(f"--stale-after-s must exceed {stale_after_floor_s(settings)} s "
                         "(CXR_TASK_TIME_LIMIT_S + CXR_RETRY_BACKOFF_MAX_S), or a job still "
                         "running is sent again")
    client = redis_client(settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                          socket_timeout=REDIS_SOCKET_TIMEOUT_S)
    storage = get_storage(settings)
    jobs = JobStore(client, storage)
    if args.command == "reconcile":
        if args.every is not None:
            return reconcile_forever(jobs, args)
        try:
            result = reconcile_pass(jobs, send_predict, stale_after_s=args.stale_after_s,
                                    min_age_s=args.min_age_s, scan_all=args.scan_all)
        except UNAVAILABLE as exc:
            log.error("reconcile pass failed: %s: %s", type(exc).__name__, exc)
            return EXIT_UNAVAILABLE
        log.info("reconcile pass: %s", result.summary())
        job_ids = result.requeued
    elif args.command == "purge":
        from services.worker.retention import run_purge

        result = run_purge(settings, storage, jobs)
        print(json.dumps({"purged": result.purged}))
        return EXIT_OK
    elif args.command == "drift-check":
        from services.worker.drift import check_now

        for site in check_now(settings, client):
            print(json.dumps({"site": site.site, "version": site.version, "films": site.films,
                              "test": site.test, "threshold": site.threshold,
                              "alert": site.alert, "ks": site.ks, "psi": site.psi}))
        return EXIT_OK
    elif args.command == "dead-letters":
        for entry in dead_letter.entries(client, settings.dead_letter_key):
            print(json.dumps(asdict(entry), sort_keys=True))
        return EXIT_OK
    else:
        job_ids = dead_letter.take_for_requeue(client, settings.dead_letter_key, jobs, args.job_id)
        for job_id in job_ids:
            send_predict(job_id)
    print(json.dumps({"requeued": job_ids}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
