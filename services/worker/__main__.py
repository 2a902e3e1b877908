"""Operator commands: `python -m services.worker {reconcile,dead-letters,requeue-dead-letters}`.

The worker itself runs as `celery -A services.worker.celery_app worker -Q inference`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

import redis

from services.worker import dead_letter
from services.worker.celery_app import QUEUE, TASK_NAME, app
from services.worker.reconcile import reconcile
from services.worker.settings import get_settings
from shared.jobs import JobStore
from shared.storage import get_storage


def send_predict(job_id: str) -> None:
    app.send_task(TASK_NAME, args=[job_id], queue=QUEUE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reconcile", help="re-queue unfinished jobs the broker lost")
    run.add_argument(
        "--min-age-s",
        type=float,
        default=60.0,
        help="leave younger jobs alone (their task may not be sent yet)",
    )
    commands.add_parser("dead-letters", help="print the dead-letter list as JSON lines")
    requeue = commands.add_parser("requeue-dead-letters", help="send dead-lettered jobs again")
    requeue.add_argument("--job-id", help="only this job (default: every entry)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    jobs = JobStore(client, get_storage(settings))
    if args.command == "reconcile":
        job_ids = reconcile(jobs, client, send_predict, min_age_s=args.min_age_s)
    elif args.command == "dead-letters":
        for entry in dead_letter.entries(client, settings.dead_letter_key):
            print(json.dumps(asdict(entry), sort_keys=True))
        return 0
    else:
        job_ids = dead_letter.take_for_requeue(client, settings.dead_letter_key, jobs, args.job_id)
        for job_id in job_ids:
            send_predict(job_id)
    print(json.dumps({"requeued": job_ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
