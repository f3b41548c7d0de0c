"""``TenantMemory``: one tenant's memory in this process, whatever keeps it.

The gateway sees only this class: recall and search for a scope, durable writes, erasure. What every
backend shares is here — the bounded thread pool and call timeout, the metrics, the write queue and
its outbox (``enqueue``: each message on local disk before the turn goes on, landing at most once,
replayed at the next start if the process died first), and the order of an erasure (this process's
queued writes and outbox rows first). What differs is each kind's class:
``memory.local.LocalMemory`` (mem0's ``Memory`` on our PostgreSQL) and
``memory.platform.PlatformMemory`` (the Mem0 platform's ``MemoryClient``). ``memory.backends``
names them (``BACKENDS``) and builds one per tenant.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol, Self, TypeVar

import numpy as np
import psycopg
from mem0 import Memory, MemoryClient
from psycopg_pool import AsyncConnectionPool

from memory import consolidation, mem0compat, pgvector, ranking
from memory.config import MemorySettings
from memory.outbox import Outbox, OutboxEntry
from memory.retention import Purged
from memory.scope import MemoryScope
from memory.writes import WriteQueue

log = logging.getLogger(__name__)
T = TypeVar("T")


class MemoryObserver(Protocol):
    """What the gateway's metrics need to hear from memory (memory never imports gateway)."""

    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None: ...

    def pending_writes(self, tenant: str, delta: int) -> None: ...

    def outbox_full(self, tenant: str) -> None: ...

    def consolidation(
        self, tenant: str, outcome: str, seconds: float, added: int, superseded: int, llm_calls: int
    ) -> None: ...

    def consolidation_backlog(self, tenant: str, jobs: int) -> None: ...

    def purged(self, tenant: str, kind: str, count: int) -> None: ...


class NullObserver:
    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None:
        pass

    def pending_writes(self, tenant: str, delta: int) -> None:
        pass

    def outbox_full(self, tenant: str) -> None:
        pass

    def consolidation(
        self, tenant: str, outcome: str, seconds: float, added: int, superseded: int, llm_calls: int
    ) -> None:
        pass

    def consolidation_backlog(self, tenant: str, jobs: int) -> None:
        pass

    def purged(self, tenant: str, kind: str, count: int) -> None:
        pass


def permanent_error(error: BaseException) -> bool:
    """A write the store refused for its content: retrying cannot help (the backend being down can)."""
    return isinstance(
        error, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError, UnicodeError)
    )


@dataclass(frozen=True)
class Resources:
    """What every tenant's backend of a process shares; ``memory.backends.MemoryBackends`` owns it."""

    executor: ThreadPoolExecutor
    observer: MemoryObserver
    call_timeout: float
    outbox: Outbox
    database_url: str
    embed_model: Any
    pool_size: int
    # The process's one async pool for listings on the event loop, opened on first use.
    loop_pool: Callable[[], Awaitable[AsyncConnectionPool]]
    # A consolidation job was requested here: the process's worker looks now (memory.consolidation).
    consolidation_requested: Callable[[], None] = lambda: None

    async def run(self, fn: Callable[[], T]) -> T:
        """A blocking call on the memory thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)


def results(payload: Any) -> list[dict[str, Any]]:
    """mem0's answer as a list: ``{"results": [...]}`` or a bare list."""
    if isinstance(payload, dict):
        return list(payload.get("results", []))
    return list(payload or [])


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class TenantMemory(ABC):
    """A tenant's mem0 client plus the executor, timeouts, metrics and write queue around it.

    A backend kind is a subclass: ``create`` builds it for a tenant, and it answers ``recent``, the
    user's own words for ``recall`` and the erasure of a scope's memories; it may change the filters
    its reads pass (``read_filters``).
    """

    #: Whether the kind takes imports (``POST /v1/memories``, ``memories import``) and exports.
    portable: bool = False

    def __init__(
        self,
        *,
        tenant: str,
        kind: str,
        client: Memory | MemoryClient,
        settings: MemorySettings,
        resources: Resources,
    ) -> None:
        self.tenant = tenant
        self.kind = kind  # the ``backend`` label of its metrics
        self.client = client
        self.settings = settings
        self._run = resources.run
        self._executor = resources.executor
        self._observer = resources.observer
        self._call_timeout = resources.call_timeout
        self._outbox = resources.outbox
        self._embed_model = resources.embed_model
        self._resources = resources
        self._about: dict[str, np.ndarray] = {}  # the agent descriptions the greeting ranks against
        self._abandoned: set[asyncio.Future[Any]] = set()
        observer = resources.observer
        self.writes = WriteQueue(
            name=tenant, on_depth=lambda d: observer.pending_writes(tenant, d), permanent=permanent_error
        )

    @classmethod
    @abstractmethod
    async def create(cls, tenant: str, settings: MemorySettings, resources: Resources) -> Self:
        """Build the tenant's backend (its client, off the event loop)."""

    @abstractmethod
    async def recent(
        self, scope: MemoryScope, limit: int, timeout: float | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        """The scope's newest ``limit`` memories (bounded and ordered, unlike mem0's default 20).

        ``role`` narrows raw (``infer=False``) memories to what one side said, where the kind can.
        """

    @abstractmethod
    async def _users_words(
        self, scope: MemoryScope, limit: int, timeout: float | None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` raw memories the *user* said."""

    @abstractmethod
    async def _erase(self, scope: MemoryScope, timeout: float) -> int:
        """Delete every memory stored for the scope; how many."""

    @abstractmethod
    async def _release(self) -> None:
        """Give back what the backend holds (its pools, its HTTP client), after its writes drained."""

    async def _call(self, operation: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a blocking mem0 call on the bounded pool, timed, counted and bounded like ``_acall``."""
        loop = asyncio.get_running_loop()
        return await self._acall(operation, loop.run_in_executor(self._executor, fn), timeout)

    async def _acall(self, operation: str, call: Awaitable[T], timeout: float | None = None) -> T:
        """Await one memory call (a coroutine on the loop, or a worker thread's future) with the
        call timeout, timing it and counting failures in the backend's metrics.

        A timed-out or abandoned call is counted and given up at once; its cancellation (psycopg
        cancels the query on the server, which takes a round trip to a backend that may be the slow
        part; a thread just finishes) happens in the background instead of holding up the caller.
        """
        start = perf_counter()
        ok = False
        task = asyncio.ensure_future(call)
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout or self._call_timeout)
            ok = True
            return result
        except BaseException:
            if not task.done():
                task.cancel()
                self._abandoned.add(task)
                task.add_done_callback(_forget)
                task.add_done_callback(self._abandoned.discard)
            raise
        finally:
            self._observer.memory_call(self.tenant, operation, self.kind, perf_counter() - start, ok)

    async def recall(
        self, scope: MemoryScope, limit: int, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """What we know about the scope, newest first — for greetings and ``get_memories()``.

        Raw memories (``infer=False``) keep each side's words; what the *user* said is what we know
        about them. Extracted memories (``infer=True``) are facts already and carry no role.
        """
        if self.settings.infer:
            return await self.recent(scope, limit, timeout)
        return await self._users_words(scope, limit, timeout)

    async def for_greeting(
        self,
        scope: MemoryScope,
        limit: int,
        *,
        about: str | None = None,
        params: ranking.RankingParams | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The ``limit`` memories a greeting should name, best first (``memory.ranking``): from a
        bounded pool of the newest current facts and things the user said, ranked by kind, recency
        and relevance to ``about`` (the agent), near-duplicates merged."""
        params = params or ranking.RankingParams()
        pool = max(limit, params.pool_size)
        if self.settings.has_facts:
            found = [m for m in await self.recent(scope, pool, timeout) if m.get("role") in (None, "user")]
        else:
            found = await self._users_words(scope, pool, timeout)
        about_vector = self._about_vector(about) if about and params.relevance_weight > 0 else None
        return ranking.rank(found, limit=limit, embed=self.embed, about=about_vector, params=params)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings of ``texts`` with the process's model (no NaN for empty text)."""
        vectors = np.asarray(self._embed_model.embed(texts, norm=True), dtype=np.float32)
        return np.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)

    def _about_vector(self, about: str) -> np.ndarray:
        vector = self._about.get(about)
        if vector is None:
            if len(self._about) >= 64:  # tenants' prompts change rarely; bound it all the same
                self._about.clear()
            vector = self._about[about] = self.embed([about])[0]
        return vector

    def read_filters(self, scope: MemoryScope) -> dict[str, Any]:
        """The filters a read of the scope passes to the client: its retrieval IDs (``memory.scope``)."""
        return scope.retrieval_filters()

    async def search(
        self, scope: MemoryScope, query: str, *, limit: int, threshold: float, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The scope's memories most like ``query``, at most ``limit``, scoring at least ``threshold``."""
        client, filters = self.client, self.read_filters(scope)
        return results(
            await self._call(
                "search",
                lambda: client.search(query, filters=filters, top_k=limit, threshold=threshold),
                timeout,
            )
        )

    async def all_memories(self, scope: MemoryScope, limit: int = 10_000) -> list[dict[str, Any]]:
        return await self.recent(scope, limit)

    async def add(self, scope: MemoryScope, messages: list[dict[str, Any]], *, infer: bool) -> None:
        ids = scope.storage_ids()
        metadata = {"platform": "pipecat", "source": "memory-gateway"}
        client = self.client
        await self._call("add", lambda: client.add(messages, metadata=metadata, infer=infer, **ids))

    async def add_entry(self, entry: OutboxEntry) -> None:
        """Store one message under its idempotency key (one message per call: mem0 shares a call's
        metadata between its messages, and each row needs a key of its own).

        An imported memory (``memory.portability``) brings its own metadata and ``created_at``
        (mem0 keeps a ``created_at`` it is given); an imported fact has no role and is written by
        ``_add_fact``.
        """
        base = (
            dict(entry.metadata)
            if entry.metadata is not None
            else {"platform": "pipecat", "source": "memory-gateway"}
        )
        metadata: dict[str, Any] = {
            **base,
            pgvector.IDEMPOTENCY_KEY: entry.key,
            "session_started_at": entry.session_start,
        }
        if entry.infer:
            metadata[pgvector.FAN_OUT] = True
        client, ids, infer, start = self.client, dict(entry.ids), entry.infer, entry.session_start
        if not entry.role:
            fact = self._add_fact(entry.content, {**metadata, **ids})
            await self._call("add", lambda: mem0compat.run_writing(start, ids, fact))
            return
        messages = [{"role": entry.role, "content": entry.content}]

        def add() -> Any:
            return client.add(messages, metadata=metadata, infer=infer, **ids)

        await self._call("add", lambda: mem0compat.run_writing(start, ids, add))

    def _add_fact(self, text: str, payload: dict[str, Any]) -> Callable[[], Any]:
        """The blocking call that stores ``text`` as a fact (no role) with ``payload``."""
        raise ValueError(f"memory backend {self.kind!r} does not import facts")

    async def enqueue_import(
        self, entries: list[OutboxEntry], *, share: float
    ) -> list[asyncio.Future[bool]] | None:
        """Make an import's memories durable and queue them — all of them, or none (None) when they
        would fill more than ``share`` of the outbox: the rest is the room live sessions' turns keep."""
        ceiling = int(self._outbox.max_bytes * share)
        durable = await self._outbox.append_many(entries, ceiling=ceiling)
        if entries and not all(durable):
            return None
        return [await self.submit_entry(e, durable=True) for e in entries]

    async def export_pages(
        self, scope: MemoryScope | None, page: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every visible memory of the scope (None: the whole tenant), oldest first, a page at a time."""
        raise ValueError(f"memory backend {self.kind!r} does not export")
        yield []  # pragma: no cover  (makes this an async generator)

    async def backfill_text_search(self, batch: int = 200) -> int:
        """Fill the full-text column of rows an earlier version wrote (``memory.pgvector``); how many
        were filled (0: nothing left, or a kind without one)."""
        return 0

    async def purge_expired(self, *, batch: int, max_batches: int) -> Purged | None:
        """Delete what the tenant's retention has expired (``memory.retention``); a kind that keeps
        no retention purges nothing."""
        return Purged()

    async def enqueue(self, entries: list[OutboxEntry]) -> list[asyncio.Future[bool]]:
        """Make the messages durable, then queue them; returns when they are on disk (not stored).

        A full outbox refuses the rows (counted: ``outbox_full``, logged ``memory.outbox_full``);
        they are queued in memory anyway, so they still land unless this process dies first.
        Refusing the turn, or making it wait, would hold the conversation hostage to a database
        outage, and dropping the write would make its loss certain rather than merely possible.
        """
        durable = [False] * len(entries)
        if entries:
            durable = await self._outbox.append_many(entries)
            refused = durable.count(False)
            if refused:
                for _ in range(refused):
                    self._observer.outbox_full(self.tenant)
                log.warning(
                    "memory.outbox_full tenant=%s refused=%d outbox_bytes=%d max_bytes=%d",
                    self.tenant,
                    refused,
                    self._outbox.bytes,
                    self._outbox.max_bytes,
                )
        return [await self.submit_entry(e, durable=d) for e, d in zip(entries, durable, strict=True)]

    async def submit_entry(self, entry: OutboxEntry, *, durable: bool) -> asyncio.Future[bool]:
        return await self.writes.submit(lambda: self._land(entry, durable), tag=entry, durable=durable)

    async def _land(self, entry: OutboxEntry, durable: bool) -> None:
        try:
            await self.add_entry(entry)
        except Exception as e:
            if durable and permanent_error(e):
                # Refused for its content: it would be refused again at every start.
                await self._outbox.delete(entry.key)
            raise
        if durable:
            await self._outbox.delete(entry.key)

    async def request_consolidation(self, scope: MemoryScope, timeout: float = 2.0) -> bool:
        """Queue the scope's new turns for consolidation (``memory.consolidation``), if the tenant
        consolidates; one bounded insert, never the work itself. False if it could not be queued
        (logged; the turns stay raw and the scope's next request picks them up)."""
        settings = self.settings.consolidation
        if not settings.enabled:
            return False
        try:
            pool = await self._resources.loop_pool()
            await asyncio.wait_for(
                consolidation.request(pool, self.tenant, scope.retrieval_filters(), settings.delay_secs),
                timeout,
            )
        except Exception as e:
            log.warning(
                "memory.consolidation_request_failed tenant=%s error=%s", self.tenant, type(e).__name__
            )
            self._observer.consolidation(self.tenant, "request_failed", 0.0, 0, 0, 0)
            return False
        self._resources.consolidation_requested()
        return True

    async def purge_local(self, scope: dict[str, str]) -> tuple[int, int]:
        """Drop this process's queued writes and outbox rows under ``scope``: (jobs, rows)."""
        jobs = self.writes.purge(lambda e: isinstance(e, OutboxEntry) and e.matches(scope))
        rows = await self._outbox.purge(self.tenant, scope)
        return jobs, rows

    async def forget(self, scope: MemoryScope, timeout: float = 120.0) -> int:
        """Erase everything stored for the scope's user (or agent/run); return how many memories.

        A data-subject erasure: this process's queued writes and outbox rows for the scope are
        dropped first, then the kind erases what it stored (with our store, everywhere and for every
        replica: ``memory.local``).
        """
        jobs, rows = await self.purge_local(scope.retrieval_filters())
        if jobs or rows:
            log.info("memory.erasure_purged tenant=%s queued=%d outbox=%d", self.tenant, jobs, rows)
        return await self._erase(scope, timeout)

    async def close(self, drain_timeout: float) -> bool:
        drained = await self.writes.drain(drain_timeout)
        await self._release()
        return drained
