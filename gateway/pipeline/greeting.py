"""The bot's first words: what it remembers about the caller, or a plain hello — never a wait.

Memories are fetched as soon as ``/start`` knows who is calling (the socket usually opens a few
milliseconds later, so the greeting is ready when it does); the session waits for them only until the
greeting deadline, counted from the WebSocket accept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from gateway.logging import get_logger
from gateway.tenants import GreetingSettings
from memory.scope import MemoryScope
from memory.tenant import TenantMemory

log = get_logger(__name__)

Outcome = Literal["recalled", "none", "fallback"]


@dataclass(frozen=True, slots=True)
class Greeting:
    text: str
    memories: int
    outcome: Outcome


def _fact(memory: dict[str, Any]) -> str:
    return " ".join(str(memory.get("memory", "")).split()).rstrip(" .!?;,")


def compose(memories: list[dict[str, Any]], settings: GreetingSettings) -> Greeting:
    facts = [f for f in (_fact(m) for m in memories[: settings.max_memories]) if f]
    if not facts:
        return Greeting(settings.new, 0, "none")
    return Greeting(settings.known.format(facts="; ".join(facts)), len(facts), "recalled")


def fallback(settings: GreetingSettings) -> Greeting:
    return Greeting(settings.new, 0, "fallback")


def start_prefetch(
    backend: TenantMemory, scope: MemoryScope, settings: GreetingSettings
) -> asyncio.Task[Any]:
    """Begin fetching the greeting's memories now; the session collects the result later."""
    limit = max(1, settings.max_memories)
    return asyncio.create_task(backend.recall(scope, limit), name="greeting-prefetch")


async def collect(task: asyncio.Task[Any], settings: GreetingSettings, deadline: float) -> Greeting:
    """The greeting, from the prefetch if it finishes by ``deadline`` (loop time), else the fallback."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        # Usually done by now (fetched from /start on): no timer, shield or (on Python 3.11, where
        # Pipecat swaps in ``wait_for2``) extra task on the way to the greeting.
        memories = (
            task.result()
            if task.done()
            else await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        )
    except TimeoutError:
        task.cancel()
        log.warning("greeting.deadline_missed")
        return fallback(settings)
    except asyncio.CancelledError:
        if task.cancelled():
            return fallback(settings)
        raise
    except Exception as e:
        # The backend already counted it (gateway_memory_errors_total{operation="get_all"}).
        log.warning("greeting.memory_failed", error=type(e).__name__)
        return fallback(settings)
    return compose(memories, settings)
