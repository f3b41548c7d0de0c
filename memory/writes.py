"""Bounded, retrying queue of memory writes.

Storing a turn must never delay the conversation, must not pile up without limit when the backend is
slow, and must not drop what the user said when the backend blips or the process shuts down
gracefully. One queue per tenant backend; a full queue makes the producer wait (back-pressure on
that tenant only) instead of dropping.

A job whose message is also in the outbox (``memory.outbox``) is *durable*: it retries without an
attempt limit (capped backoff), because giving up would only leave it in the outbox until the next
start; closing leaves it there. Durable jobs never wait for room: they are bounded by the outbox's
bytes (``GATEWAY_OUTBOX_MAX_BYTES``), and making a turn wait for a database outage is what the outbox
is for avoiding. ``maxsize`` bounds the other jobs (those the full outbox refused), whose producer
waits for room. A job carries a ``tag`` (its outbox entry) so an erasure can
``purge`` the matching jobs that have not started, and stop retrying those that have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: jobs live in a set
class WriteJob:
    run: Callable[[], Awaitable[None]]
    attempts: int = 0
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    tag: Any = None
    durable: bool = False
    dropped: bool = False
    running: bool = False


async def _nothing() -> None:
    return None


class WriteQueue:
    def __init__(
        self,
        *,
        name: str,
        maxsize: int = 1000,
        workers: int = 2,
        max_attempts: int = 12,
        backoff_secs: float = 0.2,
        max_backoff_secs: float = 5.0,
        on_depth: Callable[[int], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        permanent: Callable[[BaseException], bool] = lambda _e: False,
    ) -> None:
        self._name = name
        # Unbounded itself: ``_room`` bounds the jobs not in the outbox, the outbox bounds the rest.
        self._queue: asyncio.Queue[WriteJob] = asyncio.Queue()
        self._room = asyncio.Semaphore(maxsize)
        self._max_attempts = max_attempts
        self._backoff = backoff_secs
        self._max_backoff = max_backoff_secs
        self._on_depth = on_depth or (lambda _n: None)
        self._on_failure = on_failure or (lambda: None)
        self._permanent = permanent
        self._pending = 0
        self._jobs: set[WriteJob] = set()
        self._tasks = [asyncio.create_task(self._worker(), name=f"writes-{name}-{i}") for i in range(workers)]
        self._closing = False

    @property
    def pending(self) -> int:
        return self._pending

    def _set_pending(self, delta: int) -> None:
        self._pending += delta
        self._on_depth(delta)

    async def submit(
        self, run: Callable[[], Awaitable[None]], *, tag: Any = None, durable: bool = False
    ) -> asyncio.Future[bool]:
        """Queue a write; the returned future resolves True once stored (or purged), False if given up."""
        if self._closing:
            raise RuntimeError("write queue is closed")
        if not durable:
            await self._room.acquire()
            if self._closing:
                self._room.release()
                raise RuntimeError("write queue is closed")
        job = WriteJob(run=run, tag=tag, durable=durable)
        self._set_pending(+1)
        self._jobs.add(job)
        self._queue.put_nowait(job)
        return job.done

    def purge(self, predicate: Callable[[Any], bool]) -> int:
        """Drop every unfinished job whose tag matches (an erasure); return how many.

        A job not running now is finished at once and lets go of its closure (and with it the text);
        one whose call is under way is not retried — if that call still lands, the erasure's
        tombstone refuses it where the row is written.
        """
        dropped = 0
        for job in list(self._jobs):
            if job.dropped or job.tag is None or not predicate(job.tag):
                continue
            job.dropped = True
            dropped += 1
            if not job.running:
                job.run, job.tag = _nothing, None
                self._finish(job, True)
        return dropped

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if not job.dropped:
                    await self._attempt(job)
            finally:
                self._queue.task_done()

    async def _attempt(self, job: WriteJob) -> None:
        while True:
            job.attempts += 1
            job.running = True
            try:
                await job.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                permanent = self._permanent(e)
                log.warning(
                    "memory write failed (queue=%s attempt=%d permanent=%s)",
                    self._name,
                    job.attempts,
                    permanent,
                    exc_info=True,
                )
                # Data the store refuses is refused again on every retry; retrying it would only hold
                # a worker (and every write queued behind it) for the whole backoff.
                if job.dropped:
                    self._finish(job, True)
                    return
                if permanent or (not job.durable and job.attempts >= self._max_attempts):
                    self._on_failure()
                    self._finish(job, False)
                    return
                job.running = False
                await asyncio.sleep(min(self._max_backoff, self._backoff * 2 ** min(job.attempts - 1, 16)))
                if job.dropped:  # purged while waiting to retry (already finished)
                    return
                continue
            finally:
                job.running = False
            self._finish(job, True)
            return

    def _finish(self, job: WriteJob, ok: bool) -> None:
        if job not in self._jobs:
            return
        self._jobs.discard(job)
        self._set_pending(-1)
        if not job.durable:
            self._room.release()
        if not job.done.done():
            job.done.set_result(ok)

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for what is queued now (the queue stays open); True if it all landed."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def drain(self, timeout: float) -> bool:
        """Stop accepting writes and wait up to ``timeout`` s for queued ones; True if all finished."""
        self._closing = True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            drained = True
        except TimeoutError:
            drained = False
            log.error(
                "memory writes still pending at shutdown (queue=%s pending=%d)", self._name, self._pending
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return drained
