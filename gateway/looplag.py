"""How late the event loop runs: the saturation signal an operator sees before callers hear it.

A voice session needs the loop every 20 ms (a caller's audio frame in, the bot's audio out); when the
loop is late, turn ends are detected late and the bot's audio stutters. ``LoopLagMonitor`` sleeps a
short interval over and over and records how much later than asked it woke up; the worst lag of the
last few seconds is the gauge ``gateway_event_loop_lag_seconds`` (read at scrape time, so a one-off
stall between two scrapes is still seen). ``WindowedMax`` keeps such a worst value for any signal
(the VAD's wait, ``gateway.pipeline.vad``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable


class WindowedMax:
    """The largest value observed in the last ``window`` seconds, in one-second buckets.

    ``observe`` is O(1) amortised and allocates nothing per call within a second, so it can sit on a
    per-frame path.
    """

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._buckets: deque[tuple[int, float]] = deque()

    def observe(self, value: float) -> None:
        second = int(self._clock())
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            if value > buckets[-1][1]:
                buckets[-1] = (second, value)
        else:
            buckets.append((second, value))
            self._trim(second)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window:
            self._buckets.popleft()

    def value(self) -> float:
        self._trim(int(self._clock()))
        return max((v for _, v in self._buckets), default=0.0)


class LoopLagMonitor:
    """Samples the running loop's lag every ``interval`` seconds (one sleeping task per process)."""

    def __init__(self, interval: float = 0.1, window: float = 10.0) -> None:
        self._interval = interval
        self.worst = WindowedMax(window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            self.worst.observe(max(0.0, loop.time() - asked))
