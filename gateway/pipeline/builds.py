"""When a text session builds its Pipecat pipeline: after the greetings this process still owes.

A text session greets its caller before it has a pipeline (``gateway.pipeline.rtvi``), so building one
(≈5 ms of event-loop CPU: the processors, the worker, the ``StartFrame`` through all of them) is work
nobody is waiting for yet — unless the caller has already said something. In a burst, building every
pipeline as its greeting goes out puts those milliseconds in front of the next callers' greetings;
here a build waits until no caller of this process is owed a greeting (from its ``/start``, or its
connect when it had none here, until it is greeted or gone), and then
builds run ``concurrency`` at a time, in the order they asked. A build never waits longer than
``max_defer`` (a steady overload must not starve them), and a session whose client has sent anything
besides ``client-ready`` builds at once: its caller is waiting for an answer now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class PipelineBuilds:
    """One per process (``SessionDeps``): counts the greetings owed and hands out build turns."""

    def __init__(self, *, concurrency: int = 8, max_defer: float = 2.0) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._max_defer = max_defer
        self._owed = 0
        self._no_greeting_owed = asyncio.Event()
        self._no_greeting_owed.set()
        self._turns = 0  # waiting for a slot or holding one
        self._no_turns = asyncio.Event()
        self._no_turns.set()

    @property
    def greetings_owed(self) -> int:
        return self._owed

    def greeting_owed(self) -> None:
        """A session was assembled: its caller is about to connect, or has, and will be greeted."""
        self._owed += 1
        self._no_greeting_owed.clear()

    def greeting_paid(self) -> None:
        """That caller was greeted, or left first."""
        self._owed -= 1
        if self._owed <= 0:
            self._owed = 0
            self._no_greeting_owed.set()

    @contextlib.asynccontextmanager
    async def turn(self, urgent: asyncio.Event | None = None, *, now: bool = False) -> AsyncIterator[None]:
        """Hold a build slot: once no greeting is owed, ``urgent`` is set or ``max_defer`` has passed
        (``now``: at once — a session that cannot greet without its pipeline)."""
        self._turns += 1
        self._no_turns.clear()
        try:
            if (
                not now
                and not self._no_greeting_owed.is_set()
                and not (urgent is not None and urgent.is_set())
            ):
                waits = [asyncio.ensure_future(self._no_greeting_owed.wait())]
                if urgent is not None:
                    waits.append(asyncio.ensure_future(urgent.wait()))
                try:
                    await asyncio.wait(waits, timeout=self._max_defer, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            async with self._slots:
                yield
        finally:
            self._turns -= 1
            if not self._turns:
                self._no_turns.set()

    async def settled(self) -> None:
        """Return once no session of this process is waiting for, or holding, a build turn (what a
        benchmark waits for before it reads the CPU a set-up cost)."""
        await self._no_turns.wait()
