"""Post-session consolidation: facts extracted off the caller's path, and kept current.

mem0 2.x's ``add(infer=True)`` only ever adds (mem0 PR #4805; contradiction handling was declined,
mem0 #5576; its de-duplication is an exact hash), and users report it taking 4-20 s a call. So a
tenant with ``memory.consolidation.enabled`` stores its turns raw while the session runs (no LLM on
the hot path) and consolidates them afterwards:

1. **Queued, durably.** When a session ends (or every ``after_turns`` user turns) the session asks
   for a job: one row per user scope in ``gateway_consolidation_jobs`` (PostgreSQL, shared by every
   replica). The turns themselves are the raw rows the durable write path landed (outbox, exactly
   once); a job only says "this scope has new turns", so a second request for a scope whose job is
   waiting or running bumps its ``requested`` counter instead of adding a row: the queue is bounded
   by the number of users, and a job that ran while new turns landed runs again.
2. **Claimed by one worker across replicas** (``FOR UPDATE SKIP LOCKED``, a lease in
   ``locked_until``): a replica that dies mid-job leaves a lease that lapses, and the job runs again.
   Each process runs one job at a time, and each tenant's jobs at most ``jobs_per_minute`` (a token
   bucket per tenant and process).
3. **Extracted through mem0**: the scope's raw turns not consolidated yet, oldest first (at most
   ``max_turns``), go to ``Memory.add(infer=True)`` — mem0's own prompt and parsing, the tenant's
   ``extraction_llm`` — under an idempotency key per job run, so a job retried after a crash inserts
   its facts once.
4. **Superseded**: each new fact is compared with the user's current facts nearest to it (vector
   search), in one LLM call with our decision prompt (``SUPERSEDE_PROMPT``); an existing fact the new
   one contradicts ("lives in Lyon" → "moved to Oslo") or repeats is marked superseded
   (``superseded_at``, ``superseded_by``, ``superseded_reason`` in its payload). It stays for audit
   until retention removes it, and erasure removes it like any row; nothing reads it: searches, the
   greeting's listing and ``recent`` leave it out (``memory.pgvector.CURRENT``).
5. The turns are marked ``consolidated_at`` and the job is done.

Metrics go through the ``MemoryObserver`` (memory never imports gateway): a job's seconds and outcome,
the backlog per tenant, facts added and superseded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic, perf_counter
from typing import Any, Literal, Protocol

from mem0 import Memory
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from memory import mem0compat, pgvector
from memory.config import ConsolidationSettings
from memory.ranking import CONSOLIDATED_AT, SUPERSEDED_AT, SUPERSEDED_BY

log = logging.getLogger(__name__)

JOBS_TABLE = "gateway_consolidation_jobs"
JOBS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {JOBS_TABLE} (id BIGSERIAL PRIMARY KEY, tenant TEXT NOT NULL,"
    " scope JSONB NOT NULL, requested INTEGER NOT NULL DEFAULT 1, attempts INTEGER NOT NULL DEFAULT 0,"
    " not_before TIMESTAMPTZ NOT NULL DEFAULT now(), locked_until TIMESTAMPTZ,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_error TEXT)",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {JOBS_TABLE}_scope_idx ON {JOBS_TABLE} (tenant, scope)",
    f"CREATE INDEX IF NOT EXISTS {JOBS_TABLE}_due_idx ON {JOBS_TABLE} (not_before)",
)
# A job's lease: longer than a job can take (mem0's extraction call plus ours), short enough that a
# dead replica's job runs again soon.
LEASE_SECS = 180.0
MAX_ATTEMPTS = 5
SUPERSEDED_REASON = "superseded_reason"
# How many current facts near each new fact the decision sees.
NEIGHBOURS = 5

Outcome = Literal["consolidated", "empty", "retried", "abandoned"]


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    tenant: str
    scope: dict[str, str]
    requested: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Result:
    turns: int
    added: int
    superseded: int
    llm_calls: int


# -- the queue -----------------------------------------------------------------------------------------


async def request(pool: AsyncConnectionPool, tenant: str, scope: dict[str, str], delay_secs: float) -> None:
    """Ask for the scope's turns to be consolidated (one row per scope; a repeat bumps ``requested``)."""
    async with pool.connection() as conn:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {t} (tenant, scope, not_before)"
                " VALUES (%s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (tenant, scope) DO UPDATE SET requested = {t}.requested + 1,"
                " not_before = least({t}.not_before, excluded.not_before)"
            ).format(t=sql.Identifier(JOBS_TABLE)),
            (tenant, Jsonb(scope), delay_secs),
        )


async def claim(pool: AsyncConnectionPool, tenants: list[str]) -> Job | None:
    """Take the oldest due job of one of ``tenants`` that no live worker holds, for ``LEASE_SECS``."""
    if not tenants:
        return None
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL(
                "UPDATE {t} SET locked_until = now() + make_interval(secs => %s), attempts = attempts + 1"
                " WHERE id = (SELECT id FROM {t} WHERE not_before <= now() AND tenant = ANY(%s)"
                " AND (locked_until IS NULL OR locked_until < now())"
                " ORDER BY not_before, id FOR UPDATE SKIP LOCKED LIMIT 1)"
                " RETURNING id, tenant, scope, requested, attempts"
            ).format(t=sql.Identifier(JOBS_TABLE)),
            (LEASE_SECS, tenants),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return Job(int(row[0]), str(row[1]), dict(row[2]), int(row[3]), int(row[4]))


async def finish(pool: AsyncConnectionPool, job: Job) -> None:
    """Done: delete the job, unless it was requested again meanwhile (then it runs again now)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = %s AND requested = %s").format(sql.Identifier(JOBS_TABLE)),
            (job.id, job.requested),
        )
        if cur.rowcount == 0:
            await conn.execute(
                sql.SQL("UPDATE {} SET locked_until = NULL, attempts = 0 WHERE id = %s").format(
                    sql.Identifier(JOBS_TABLE)
                ),
                (job.id,),
            )


async def fail(pool: AsyncConnectionPool, job: Job, error: str) -> bool:
    """Release the job for a retry after a backoff (2, 4, 8 … s); False once it has had its attempts
    (then it is deleted: its turns stay raw, and the scope's next session asks again)."""
    async with pool.connection() as conn:
        if job.attempts >= MAX_ATTEMPTS:
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(JOBS_TABLE)), (job.id,)
            )
            return False
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET locked_until = NULL, last_error = %s,"
                " not_before = now() + make_interval(secs => %s) WHERE id = %s"
            ).format(sql.Identifier(JOBS_TABLE)),
            (error[:200], float(2**job.attempts), job.id),
        )
    return True


async def backlog(pool: AsyncConnectionPool) -> dict[str, int]:
    """Jobs waiting or running, per tenant."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT tenant, count(*) FROM {} GROUP BY tenant").format(sql.Identifier(JOBS_TABLE))
        )
        return {str(t): int(n) for t, n in await cur.fetchall()}


async def erase(pool: AsyncConnectionPool, tenant: str, scope: dict[str, str]) -> None:
    """An erasure: the scope's jobs go too (they hold IDs only, but there is nothing left to do)."""
    async with pool.connection() as conn:
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE tenant = %s AND scope @> %s").format(sql.Identifier(JOBS_TABLE)),
            (tenant, Jsonb(scope)),
        )


# -- one job's work (blocking: runs on the memory thread pool) -----------------------------------------

SUPERSEDE_PROMPT = """You keep a person's long-term memory current.
You are given NEW facts just learned about the user and EXISTING facts remembered earlier.
For each EXISTING fact decide whether a NEW fact supersedes it:
- "contradicts": the NEW fact makes the EXISTING one no longer true (e.g. EXISTING "User lives in Lyon",
  NEW "User moved from Lyon to Oslo").
- "repeats": the NEW fact says the same thing again, possibly in other words.
Leave an EXISTING fact alone when it is merely related, or when both can be true at once.
Answer with JSON only, in this form:
{"superseded": [{"existing": "<existing id>", "by": "<new id>", "reason": "contradicts" | "repeats"}]}
Use an empty list when nothing is superseded."""


def supersede_request(new: list[tuple[str, str]], existing: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The decision's messages: ``new`` and ``existing`` as (id, text), with short IDs of their own."""
    body = {
        "new": [{"id": f"n{i}", "text": text} for i, (_, text) in enumerate(new)],
        "existing": [{"id": f"e{i}", "text": text} for i, (_, text) in enumerate(existing)],
    }
    return [
        {"role": "system", "content": SUPERSEDE_PROMPT},
        {"role": "user", "content": json.dumps(body, ensure_ascii=False)},
    ]


def parse_decisions(
    answer: str, new: list[tuple[str, str]], existing: list[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(existing row id, new row id, reason) for each valid decision; anything else is ignored —
    an ID the model made up, a reason outside the two, malformed JSON (nothing superseded)."""
    text = re.sub(r"^```(?:json)?|```$", "", answer.strip(), flags=re.MULTILINE).strip()
    try:
        data = json.loads(text)
    except ValueError:
        match = re.search(r"\{.*\}", text, re.DOTALL)
        if match is None:
            return []
        try:
            data = json.loads(match.group(0))
        except ValueError:
            return []
    order = {row_id: i for i, (row_id, _) in enumerate(new)}
    items = data.get("superseded") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    decided: dict[str, tuple[str, str, str]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        e, n, reason = str(item.get("existing", "")), str(item.get("by", "")), item.get("reason")
        if reason not in ("contradicts", "repeats") or not e.startswith("e") or not n.startswith("n"):
            continue
        try:
            ei, ni = int(e[1:]), int(n[1:])
        except ValueError:
            continue
        if not (0 <= ei < len(existing) and 0 <= ni < len(new)) or existing[ei][0] in decided:
            continue
        old_id = existing[ei][0]
        if old_id in order and order[old_id] >= ni:
            continue  # a fact of this batch is superseded only by a later one, never by itself
        decided[old_id] = (old_id, new[ni][0], str(reason))
    return list(decided.values())


def _scope_where(filters: dict[str, str]) -> tuple[sql.Composable, list[Any]]:
    conditions, params = mem0compat.build_filter_conditions(filters)
    return sql.SQL(" AND ".join(f"({c})" for c in conditions)), params


def consolidate(client: Memory, job: Job, settings: ConsolidationSettings, started_at: str) -> Result:
    """Extract the scope's new turns into facts and supersede what they contradict or repeat."""
    store = client.vector_store
    if not isinstance(store, pgvector.IndexedPGVector):
        raise TypeError("consolidation needs the gateway's pgvector store")
    table = store.table()
    where, params = _scope_where(job.scope)
    with store.connection_pool.connection() as conn:
        turns = conn.execute(
            sql.SQL(
                "SELECT id, payload->>'role', payload->>'data' FROM {} WHERE {} AND payload ? 'role'"
                " AND NOT payload ? %s ORDER BY payload->>'created_at', id LIMIT %s"
            ).format(table, where),
            [*params, CONSOLIDATED_AT, settings.max_turns],
        ).fetchall()
    if not turns:
        return Result(0, 0, 0, 0)
    messages = [{"role": r[1], "content": r[2]} for r in turns if r[1] in ("user", "assistant") and r[2]]
    key = f"consolidation.{job.id}.{job.requested}"
    metadata: dict[str, Any] = {
        "platform": "pipecat",
        "source": "memory-gateway",
        pgvector.IDEMPOTENCY_KEY: key,
        pgvector.FAN_OUT: True,
        # An erasure after the job began drops what it writes (IndexedPGVector.insert's check).
        "session_started_at": started_at,
    }
    llm_calls = 0
    if messages:
        llm_calls += 1

        def extract() -> Any:
            with pgvector.facts_only():  # the turns being consolidated are no known facts
                return client.add(messages, metadata=metadata, infer=True, **job.scope)

        mem0compat.run_writing(started_at, job.scope, extract)
    with store.connection_pool.connection() as conn:
        # What this run (or an earlier attempt of it) actually inserted: mem0 reports IDs even for
        # rows the idempotency index skipped.
        new = [
            (str(r[0]), str(r[1]))
            for r in conn.execute(
                sql.SQL(
                    "SELECT id, payload->>'data' FROM {} WHERE payload->>'idempotency_key' LIKE %s"
                    " AND NOT payload ? %s ORDER BY payload->>'idempotency_key'"
                ).format(table),
                [key + ":%", SUPERSEDED_AT],
            ).fetchall()
        ]
    decisions: list[tuple[str, str, str]] = []
    if new and settings.supersede:
        # The user's current facts nearest the new ones, and the new ones themselves: a session that
        # says "I live in Lyon", then "I moved to Oslo" yields two facts, the second superseding the first.
        existing = _neighbours(store, where, params, [n[0] for n in new]) + new[:-1]
        if existing:
            llm_calls += 1
            answer = client.llm.generate_response(
                messages=supersede_request(new, existing), response_format={"type": "json_object"}
            )
            decisions = parse_decisions(str(answer or ""), new, existing)
    now = datetime.now(UTC).isoformat()
    with store.connection_pool.connection() as conn, conn.transaction():
        for old_id, new_id, reason in decisions:
            conn.execute(
                sql.SQL("UPDATE {} SET payload = payload || %s WHERE id = %s AND NOT payload ? %s").format(
                    table
                ),
                [
                    Jsonb({SUPERSEDED_AT: now, SUPERSEDED_BY: new_id, SUPERSEDED_REASON: reason}),
                    old_id,
                    SUPERSEDED_AT,
                ],
            )
        conn.execute(
            sql.SQL("UPDATE {} SET payload = payload || %s WHERE id = ANY(%s)").format(table),
            [Jsonb({CONSOLIDATED_AT: now}), [r[0] for r in turns]],
        )
    return Result(len(turns), len(new), len(decisions), llm_calls)


def _neighbours(
    store: pgvector.IndexedPGVector, where: sql.Composable, params: list[Any], new_ids: list[str]
) -> list[tuple[str, str]]:
    """The scope's current facts (no role, not superseded, not this run's) nearest each new fact."""
    statement = sql.SQL(
        """
        WITH facts AS MATERIALIZED (
            SELECT id, vector, payload FROM {t} WHERE {where} AND NOT payload ? 'role'
              AND NOT payload ? %s AND NOT (id = ANY(%s::uuid[]))
        ), fresh AS (SELECT id, vector FROM {t} WHERE id = ANY(%s::uuid[]))
        SELECT DISTINCT ON (f.id) f.id, f.payload->>'data'
        FROM fresh n CROSS JOIN LATERAL (
            SELECT id, payload FROM facts ORDER BY facts.vector <=> n.vector LIMIT %s
        ) f
        """
    ).format(t=store.table(), where=where)
    with store.connection_pool.connection() as conn:
        rows = conn.execute(statement, [*params, SUPERSEDED_AT, new_ids, new_ids, NEIGHBOURS]).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


# -- the worker ----------------------------------------------------------------------------------------


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 60.0 * 5)  # a burst of five seconds' worth
        self.tokens = self.capacity
        self.at = monotonic()

    def ready(self) -> bool:
        now = monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


class Consolidating(Protocol):
    """What the worker needs of a tenant's backend (``memory.local.LocalMemory`` provides it)."""

    @property
    def consolidation_settings(self) -> ConsolidationSettings: ...

    async def consolidate_job(self, job: Job, started_at: str) -> Result: ...


class ConsolidationWorker:
    """One per process: claims due jobs of the tenants it serves, one at a time, rate-limited per
    tenant; never on a session's path (a session only inserts its request)."""

    def __init__(
        self,
        *,
        pool: Callable[[], Awaitable[AsyncConnectionPool]],
        tenants: Callable[[], dict[str, Consolidating]],
        observer: Any,
        poll_secs: float = 1.0,
    ) -> None:
        self._pool = pool
        self._tenants = tenants
        self._observer = observer
        self._poll_secs = poll_secs
        self._buckets: dict[str, _Bucket] = {}
        self._kick = asyncio.Event()
        self._last_backlog: dict[str, int] = {}
        self.jobs_done = 0

    def kick(self) -> None:
        """A job was requested here: look now rather than at the next poll."""
        self._kick.set()

    def _ready_tenants(self, serving: dict[str, Consolidating]) -> list[str]:
        ready = []
        for name, backend in serving.items():
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate != backend.consolidation_settings.jobs_per_minute / 60.0:
                bucket = self._buckets[name] = _Bucket(backend.consolidation_settings.jobs_per_minute)
            if bucket.ready():
                ready.append(name)
        return ready

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                serving = self._tenants()
                if not serving and not self._last_backlog:
                    # No tenant here consolidates: no query at all (the common case).
                    await asyncio.sleep(self._poll_secs)
                    continue
                pool = await self._pool()
                await self._report_backlog(pool, serving)
                job = await asyncio.wait_for(claim(pool, self._ready_tenants(serving)), 10)
                failures = 0
                if job is None:
                    self._kick.clear()
                    try:
                        await asyncio.wait_for(self._kick.wait(), self._poll_secs)
                    except TimeoutError:
                        pass
                    continue
                self._buckets[job.tenant].take()
                await self._run_job(pool, serving[job.tenant], job)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6))
                log.warning(
                    "memory.consolidation_worker_down error=%s retry_secs=%.1f", type(e).__name__, delay
                )
                await asyncio.sleep(delay)

    async def _report_backlog(self, pool: AsyncConnectionPool, serving: dict[str, Consolidating]) -> None:
        counts = await asyncio.wait_for(backlog(pool), 10)
        for tenant in set(serving) | set(self._last_backlog):
            self._observer.consolidation_backlog(tenant, counts.get(tenant, 0))
        self._last_backlog = {t: counts.get(t, 0) for t in serving}

    async def _run_job(self, pool: AsyncConnectionPool, backend: Consolidating, job: Job) -> None:
        start = perf_counter()
        started_at = datetime.now(UTC).isoformat()
        outcome: Outcome
        try:
            result = await backend.consolidate_job(job, started_at)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            outcome = "retried" if await fail(pool, job, type(e).__name__) else "abandoned"
            log.warning(
                "memory.consolidation_failed tenant=%s job=%d attempt=%d error=%s outcome=%s",
                job.tenant,
                job.id,
                job.attempts,
                type(e).__name__,
                outcome,
            )
            self._observer.consolidation(job.tenant, outcome, perf_counter() - start, 0, 0, 0)
            return
        await finish(pool, job)
        outcome = "consolidated" if result.turns else "empty"
        seconds = perf_counter() - start
        self.jobs_done += 1
        self._observer.consolidation(
            job.tenant, outcome, seconds, result.added, result.superseded, result.llm_calls
        )
        log.info(
            "memory.consolidated tenant=%s job=%d turns=%d added=%d superseded=%d llm_calls=%d seconds=%.3f",
            job.tenant,
            job.id,
            result.turns,
            result.added,
            result.superseded,
            result.llm_calls,
            seconds,
        )
