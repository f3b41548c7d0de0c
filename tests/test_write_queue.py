"""The per-tenant write queue's bound: messages already in the outbox never make a turn wait; only
those the full outbox refused are bounded by the queue, whose producer then waits for room."""

from __future__ import annotations

import asyncio

from memory.writes import WriteQueue


async def _blocked_queue(maxsize: int) -> tuple[WriteQueue, asyncio.Event]:
    """A queue with one worker held by a write that lands only when the event is set."""
    release = asyncio.Event()
    queue = WriteQueue(name="spec", maxsize=maxsize, workers=1)

    async def held() -> None:
        await release.wait()

    await queue.submit(held)
    await asyncio.sleep(0)  # the worker takes it
    return queue, release


async def _landed() -> None:
    return None


async def test_writes_in_the_outbox_are_queued_without_waiting_for_room() -> None:
    queue, release = await _blocked_queue(maxsize=1)
    futures = [await asyncio.wait_for(queue.submit(_landed, durable=True), 5) for _ in range(50)]
    assert queue.pending == 51
    release.set()
    assert all(await asyncio.wait_for(asyncio.gather(*futures), 5))
    assert await queue.drain(5)


async def test_writes_not_in_the_outbox_wait_for_room_in_the_queue() -> None:
    queue, release = await _blocked_queue(maxsize=1)
    waiting = asyncio.create_task(queue.submit(_landed))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()  # the one slot is held by the blocked write
    release.set()
    assert await asyncio.wait_for(await asyncio.wait_for(waiting, 5), 5)
    assert await queue.drain(5)
