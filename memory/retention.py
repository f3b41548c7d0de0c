"""How long memories are kept: a tenant's retention, the SQL that applies it, and the purge job.

A tenant may set a time to live for **turns** (messages stored as said: their payload has a ``role``)
and for **facts** (memories an extraction LLM wrote: no ``role``), in its ``memory.retention``
(``memory.config.RetentionSettings``); unset, memories are kept until erased. A turn's age runs from
when it was said (``created_at``), a fact's from when it was last written (``updated_at``, else
``created_at``): a fact that is confirmed or corrected lives on.

Expiry is applied twice:

* **at read time**, by every read of the store (``memory.pgvector``: the greeting's listing, per-turn
  search, ``GET /v1/memories``, export, and mem0's own reads), as SQL conditions computed from the
  clock at the query, so an expired memory is never recalled — also before the purge has run, and at
  once when a tenant shortens its retention;
* **by the purge job** (``RetentionJob``), which deletes expired rows and their history in bounded
  batches, one process per table at a time (``IndexedPGVector.purge_expired``), and counts them
  (``gateway_memory_purged_total{tenant,kind}``).

Times are compared as ISO 8601 strings, as mem0 writes them (UTC, ``+00:00``) and as the rest of the
store orders them; the import normalises what it is given to that form (``memory.portability``).
Erasure is unchanged: ``forget`` deletes everything at once, expired or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory.config import MemorySettings, RetentionSettings
    from memory.tenant import TenantMemory

log = logging.getLogger(__name__)

# A row is a turn when its payload has a role (``infer=False`` stores each message with its role).
_TURN = "payload ? 'role'"
# Timestamps compare byte-wise (COLLATE "C"): a database whose default collation is a language's
# (en_US.UTF-8) compares punctuation by other rules.
_TURN_AGE = "payload->>'created_at' COLLATE \"C\""
_FACT_AGE = "coalesce(payload->>'updated_at', payload->>'created_at') COLLATE \"C\""


@dataclass(frozen=True)
class Retention:
    """A tenant's times to live, as SQL conditions on the store's ``payload``."""

    turns: timedelta | None = None
    facts: timedelta | None = None

    @classmethod
    def of(cls, settings: RetentionSettings) -> Retention:
        return cls(turns=settings.turns, facts=settings.facts)

    @property
    def forever(self) -> bool:
        return self.turns is None and self.facts is None

    def turn_cutoff(self, now: datetime) -> str | None:
        """Turns said before this (ISO 8601, UTC) have expired."""
        return (now - self.turns).isoformat() if self.turns is not None else None

    def fact_cutoff(self, now: datetime) -> str | None:
        """Facts last written before this have expired."""
        return (now - self.facts).isoformat() if self.facts is not None else None

    def keeps(self, role: str, written_at: str, now: datetime) -> bool:
        """Whether a memory (``role`` empty for a fact) written at ``written_at`` (ISO 8601, UTC) is
        within retention now — what an import checks before storing something already expired."""
        cutoff = self.turn_cutoff(now) if role else self.fact_cutoff(now)
        return cutoff is None or written_at >= cutoff

    def kept(self, now: datetime) -> tuple[list[str], list[Any]]:
        """Conditions every row within retention meets (none when memories are kept forever).

        A row without a timestamp is kept: nothing says it is old.
        """
        conditions: list[str] = []
        params: list[Any] = []
        if (turns := self.turn_cutoff(now)) is not None:
            conditions.append(
                f"NOT {_TURN} OR payload->>'created_at' IS NULL OR payload->>'created_at' >= %s"
            )
            params.append(turns)
        if (facts := self.fact_cutoff(now)) is not None:
            conditions.append(f"{_TURN} OR {_FACT_AGE} IS NULL OR {_FACT_AGE} >= %s")
            params.append(facts)
        return conditions, params

    def expired(self, now: datetime) -> tuple[str, list[Any]]:
        """One condition that the rows retention has expired meet (what the purge deletes): the
        negation of ``kept``, plus rows past mem0's own ``expiration_date``."""
        kept, params = self.kept(now)
        conditions = [f"NOT ({c})" for c in kept]
        conditions.append(
            "coalesce(payload->>'expiration_date', '') <> '' AND payload->>'expiration_date' < %s"
        )
        return " OR ".join(f"({c})" for c in conditions), [*params, now.date().isoformat()]


KEEP_FOREVER = Retention()


@dataclass
class Purged:
    """What one purge round of a table deleted."""

    turns: int = 0
    facts: int = 0
    more: bool = False  # stopped at its batch limit: the next round goes on

    def count(self, *, turns: int, facts: int) -> None:
        self.turns += turns
        self.facts += facts


# The tenants whose memories to purge, as the gateway knows them now (it reloads its tenants file).
TenantSource = Callable[[], Iterable[tuple[str, "MemorySettings"]]]
BackendFor = Callable[[str, "MemorySettings"], Awaitable["TenantMemory"]]


class RetentionJob:
    """Purges every tenant that sets a retention, one after another, every ``interval`` seconds.

    Every process runs one; per table only one of them purges at a time (the others find the lock
    taken and skip the round). A round deletes at most ``batch * max_batches`` rows per tenant and
    goes on at once (after ``pause``) while a tenant has more, so a backlog — retention newly set on
    a large table — drains steadily without one long transaction. Failures are logged and counted
    (``gateway_memory_errors_total{operation="purge"}``) and the next round tries again.
    """

    def __init__(
        self,
        *,
        tenants: TenantSource,
        backend_for: BackendFor,
        interval: float,
        batch: int = 500,
        max_batches: int = 20,
        pause: float = 1.0,
    ) -> None:
        self._tenants = tenants
        self._backend_for = backend_for
        self._interval = interval
        self._batch = batch
        self._max_batches = max_batches
        self._pause = pause

    async def run(self) -> None:
        """Forever: a round, then wait (briefly if a tenant has more to purge)."""
        while True:
            more = await self.round()
            await asyncio.sleep(self._pause if more else self._interval)

    async def round(self) -> bool:
        """Purge each tenant once; True if some tenant has more left."""
        more = False
        for tenant, settings in list(self._tenants()):
            if settings.backend != "pgvector" or settings.retention.forever:
                continue
            try:
                backend = await self._backend_for(tenant, settings)
                purged = await backend.purge_expired(batch=self._batch, max_batches=self._max_batches)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("memory.purge_failed tenant=%s error=%s", tenant, type(e).__name__)
                continue
            if purged is None:
                log.debug("memory.purge_skipped tenant=%s (another process holds the lock)", tenant)
                continue
            if purged.turns or purged.facts:
                log.info(
                    "memory.purged tenant=%s turns=%d facts=%d more=%s",
                    tenant,
                    purged.turns,
                    purged.facts,
                    purged.more,
                )
            more = more or purged.more
        return more
