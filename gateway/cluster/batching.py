"""Concurrent calls to the shared session state share round trips (group commit).

In a burst of connects every ``/start`` and every connect asks Redis or PostgreSQL something about the
same tenant. One round trip each, a tenant's checks serialised on its lock (PostgreSQL) and a bounded
number in flight made the queue the latency: ``/start`` p99 ≈0.9 s with PostgreSQL state for 500
connects on two workers (``bench/scenarios/burst_workers.py``). A ``Coalescer`` sends the first call for
a key at once and, while it is in flight, gathers the calls that arrive for the same key; they go
together in the next round trip (up to ``max_batch``), in arrival order. One call alone costs what it
did; a hundred cost a few round trips.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
R = TypeVar("R")


class Coalescer(Generic[K, A, R]):
    """``await coalescer(key, arg)`` → the result ``run(key, [..., arg, ...])`` gave for ``arg``.

    ``run`` gets the arguments of one batch, all for one key, and returns one result per argument in
    the same order; an exception it raises is every caller's of that batch. A caller that is cancelled
    while its batch is in flight does not stop the batch (the others need it).
    """

    def __init__(self, run: Callable[[K, list[A]], Awaitable[list[R]]], *, max_batch: int = 64) -> None:
        self._run = run
        self._max_batch = max_batch
        self._queues: dict[K, deque[tuple[A, asyncio.Future[R]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K, arg: A) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            drain = asyncio.create_task(self._drain(key, queue), name="state-batch")
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        queue.append((arg, future))
        return await future

    async def _drain(self, key: K, queue: deque[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]
                try:
                    results = await self._run(key, [arg for arg, _ in batch])
                except Exception as e:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
            for _, future in queue:
                future.cancel()

    async def close(self) -> None:
        for drain in list(self._drains):
            drain.cancel()
        if self._drains:
            await asyncio.wait(self._drains)
