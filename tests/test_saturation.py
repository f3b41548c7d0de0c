"""Saturation an operator sees before callers hear it: ``gateway_event_loop_lag_seconds`` and the
worst-of-a-window gauges behind it (``gateway/looplag.py``)."""

from __future__ import annotations

import asyncio
import time

from gateway.looplag import WindowedMax
from tests.conftest import RunningGateway


async def test_a_stalled_event_loop_shows_in_the_lag_gauge(gateway: RunningGateway) -> None:
    assert gateway.sample("gateway_event_loop_lag_seconds") < 0.15
    time.sleep(0.3)  # noqa: ASYNC251  (the stall under test: nothing else may run meanwhile)
    await asyncio.sleep(0.25)  # the monitor wakes late, and says by how much
    # It was asleep for up to one interval (0.1 s) of the stall: the rest is lag.
    assert gateway.sample("gateway_event_loop_lag_seconds") >= 0.19


def test_the_worst_value_is_kept_for_its_window_then_forgotten() -> None:
    now = [100.0]
    worst = WindowedMax(window=10.0, clock=lambda: now[0])
    assert worst.value() == 0.0
    worst.observe(0.5)
    worst.observe(0.2)
    now[0] = 105.0
    worst.observe(0.1)
    assert worst.value() == 0.5
    now[0] = 110.5  # the 0.5 was observed more than 10 s ago
    assert worst.value() == 0.1
    now[0] = 200.0
    assert worst.value() == 0.0
