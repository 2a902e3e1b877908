"""One pub/sub listener per gateway process for every job's "finished" notice.

A `?wait=` request registers its job here (`watch`) and sleeps on an `asyncio.Event`; the
listener, subscribed once to the pattern of `shared.jobs.keys.finished_channel`, sets the events of
the job a notice names. Before, each waiting request had a pub/sub of its own, and redis-py
closes a pub/sub's connection with it: a new Redis connection, a SUBSCRIBE and an UNSUBSCRIBE
for every request that waited.

While the listener is not subscribed (Redis restarting, the connection lost) `listening` is
false, every waiter is woken once, and waiters re-read their job on a short interval instead; the
listener reconnects on its own. Notices are only a wake-up: the job record stays the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import redis.asyncio
from redis.exceptions import RedisError

from shared.jobs.keys import finished_channel

log = logging.getLogger("cxr.gateway.notices")

CHANNEL_PREFIX = finished_channel("")
PATTERN = f"{CHANNEL_PREFIX}*"


class JobNotices:
    def __init__(self, client: redis.asyncio.Redis, reconnect_s: float = 1.0) -> None:
        self._client = client
        self._reconnect_s = reconnect_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    @property
    def waiting(self) -> int:
        """Requests waiting on a job now."""
        return sum(len(events) for events in self._waiters.values())

    def start(self) -> None:
        """Start listening on the running event loop (the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen_forever(),
                                                                name="job-notices")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.listening = False

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when job `job_id`'s notice arrives (or the listener is lost)."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _listen_forever(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.psubscribe(PATTERN)
                async for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        self.listening = True
                        log.info("listening for job notices (%s)", PATTERN)
                    elif message["type"] == "pmessage":
                        channel = message["channel"]
                        channel = channel.decode() if isinstance(channel, bytes) else channel
                        self._wake(channel.removeprefix(CHANNEL_PREFIX))
                raise ConnectionError("the job notices subscription ended")
            except Exception as exc:  # noqa: BLE001 - whatever broke, listen again
                expected = isinstance(exc, RedisError | OSError)
                # Once per outage, not once a reconnect attempt.
                log.log(logging.WARNING if self.listening or not expected else logging.DEBUG,
                        "job notices lost (%s: %s); waiting requests re-read their jobs",
                        type(exc).__name__, exc, exc_info=not expected)
                self.listening = False
                self._wake_all()  # each waiter re-reads its job and goes on polling
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(self._reconnect_s)
