"""When a text session builds its Pipecat pipeline: after the greetings its machine still owes.

A text session greets its caller before it has a pipeline (``gateway.pipeline.rtvi``), so building one
(≈3.5 ms of event-loop CPU: the processors, the worker, the ``StartFrame`` through all of them) is work
nobody is waiting for yet — unless the caller has already said something. In a burst, building every
pipeline as its greeting goes out puts those milliseconds in front of the next callers' greetings.
Here a build waits until no caller is owed a greeting (from its ``/start``, or its connect when it had
none here, until it is greeted or gone) — by this process, and under ``serve --workers`` by any worker
of the machine (``GreetingBoard``): the workers share the machine's cores, so one that has greeted its
callers and builds would take the CPU another still greets with. Then builds run ``concurrency`` at a
time, in the order they asked. A build never waits longer than ``max_defer`` (a steady overload must
not starve them), and a session whose client has sent anything besides ``client-ready`` builds at
once: its caller is waiting for an answer now.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

# How often a process whose own greetings are paid looks at the other workers' counts while a build waits.
BOARD_POLL_SECS = 0.02
_SLOT = struct.Struct("<q")


class GreetingBoard:
    """The greetings each worker of one ``serve --workers`` owes: one 8-byte slot per worker in a small
    file every worker maps shared (the supervisor creates it; writes are single aligned words)."""

    def __init__(self, path: Path, index: int) -> None:
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._slots = len(self._map) // _SLOT.size
        if not 0 <= index < self._slots:
            raise ValueError(f"worker index {index} outside the board's {self._slots} slots")
        self._offset = index * _SLOT.size

    @staticmethod
    def create(path: Path, workers: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(_SLOT.size * workers))
        finally:
            os.close(fd)
        return path

    def post(self, owed: int) -> None:
        _SLOT.pack_into(self._map, self._offset, owed)

    def others(self) -> int:
        """Greetings the other workers owe."""
        return sum(
            _SLOT.unpack_from(self._map, i * _SLOT.size)[0]
            for i in range(self._slots)
            if i * _SLOT.size != self._offset
        )

    def close(self) -> None:
        self.post(0)
        self._map.close()


class PipelineBuilds:
    """One per process (``SessionDeps``): counts the greetings owed and hands out build turns."""

    def __init__(
        self, *, concurrency: int = 8, max_defer: float = 2.0, board: GreetingBoard | None = None
    ) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._max_defer = max_defer
        self._board = board
        self._owed = 0
        # No greeting is owed here (and, with a board, on the machine): builds may go.
        self._clear = asyncio.Event()
        self._clear.set()
        self._waiting = 0  # turns waiting for the clear (the board is watched while there are any)
        self._watcher: asyncio.Task[None] | None = None
        self._turns = 0  # waiting for a slot or holding one
        self._no_turns = asyncio.Event()
        self._no_turns.set()

    @property
    def greetings_owed(self) -> int:
        return self._owed

    def greeting_owed(self) -> None:
        """A session was assembled: its caller is about to connect, or has, and will be greeted."""
        self._owed += 1
        self._clear.clear()
        if self._board is not None:
            self._board.post(self._owed)

    def greeting_paid(self) -> None:
        """That caller was greeted, or left first."""
        self._owed = max(0, self._owed - 1)
        if self._board is not None:
            self._board.post(self._owed)
        if not self._owed and self._board is None:
            self._clear.set()

    def _watch_board(self) -> None:
        if self._board is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(self._board), name="greeting-board")

    async def _watch(self, board: GreetingBoard) -> None:
        try:
            while self._waiting:
                if not self._owed and not board.others():
                    self._clear.set()
                else:
                    self._clear.clear()
                await asyncio.sleep(BOARD_POLL_SECS)
        finally:
            self._watcher = None

    @contextlib.asynccontextmanager
    async def turn(self, urgent: asyncio.Event | None = None, *, now: bool = False) -> AsyncIterator[None]:
        """Hold a build slot: once no greeting is owed, ``urgent`` is set or ``max_defer`` has passed
        (``now``: at once — a session that cannot greet without its pipeline)."""
        self._turns += 1
        self._no_turns.clear()
        try:
            if not now and not (urgent is not None and urgent.is_set()):
                await self._wait_clear(urgent)
            async with self._slots:
                yield
        finally:
            self._turns -= 1
            if not self._turns:
                self._no_turns.set()

    async def _wait_clear(self, urgent: asyncio.Event | None) -> None:
        if self._clear.is_set() and (self._board is None or not self._board.others()):
            return
        self._waiting += 1
        self._watch_board()
        waits = [asyncio.ensure_future(self._clear.wait())]
        if urgent is not None:
            waits.append(asyncio.ensure_future(urgent.wait()))
        try:
            await asyncio.wait(waits, timeout=self._max_defer, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting -= 1
            for w in waits:
                w.cancel()

    async def settled(self) -> None:
        """Return once no session of this process is waiting for, or holding, a build turn (what a
        benchmark waits for before it reads the CPU a set-up cost)."""
        await self._no_turns.wait()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._board is not None:
            self._board.close()
