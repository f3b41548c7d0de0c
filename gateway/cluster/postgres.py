"""Cluster-wide session state in the PostgreSQL the gateway already uses (no Redis needed).

For ``serve --workers N`` on one machine, whose workers share the embedded PostgreSQL, and for small
deployments of a few replicas on one shared database. Same leases, spent tokens and ``/start`` buckets
as ``gateway.cluster.redis`` (read its docstring for the semantics and the outage policy, which this
module shares: limits and single use fail closed, the rate falls back to the process's own bucket),
kept in three small tables:

``gateway_session_leases``  (tenant, session_id) → holder, expires_at
``gateway_spent_tokens``    token ID → expires_at
``gateway_start_buckets``   tenant → tokens, updated_at

Leases are taken, and ``/start`` tokens drawn, by one SQL function call for a batch of them (the calls
that arrived while the previous one was in flight, ``gateway.cluster.batching``) — one round trip,
its own transaction — that first takes a per-tenant advisory lock, so concurrent processes cannot
overshoot; times come from the database's clock (``now()``). Spending tokens is one ``INSERT … ON
CONFLICT DO NOTHING`` per batch. Expired leases are deleted as they are met, expired tokens by the
renewal loop. Under a 500-connect burst the first version (4-6 round trips per check, each holding the
tenant's lock) made ``/start`` wait seconds; a tenant's checks are still serialised on its lock, so a
cluster with many replicas and high ``/start`` rates is better served by Redis, whose scripts run
without row locks or WAL.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.cluster.registry import ClusterUnavailable, Lease, SessionRegistry
from gateway.limits import RateLimiter
from gateway.logging import get_logger
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims

log = get_logger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS gateway_session_leases (
        tenant text NOT NULL, session_id text NOT NULL, holder text NOT NULL,
        expires_at timestamptz NOT NULL, PRIMARY KEY (tenant, session_id))""",
    """CREATE TABLE IF NOT EXISTS gateway_spent_tokens (
        jti text PRIMARY KEY, expires_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS gateway_spent_tokens_expiry ON gateway_spent_tokens (expires_at)",
    """CREATE TABLE IF NOT EXISTS gateway_start_buckets (
        tenant text PRIMARY KEY, tokens double precision NOT NULL, updated_at timestamptz NOT NULL)""",
    # For each session, in order: true if it now holds a lease (below the limit, or it held one already:
    # taken over), false if refused at the limit. One call for a batch of /starts (gateway.cluster.batching).
    """CREATE OR REPLACE FUNCTION gateway_acquire_leases(
        p_tenant text, p_sids text[], p_holders text[], p_ttl float8, p_limit int) RETURNS boolean[]
    LANGUAGE plpgsql AS $$
    DECLARE live int; mine boolean; granted boolean[] := '{}';
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('gateway_lease:' || p_tenant));
        DELETE FROM gateway_session_leases WHERE tenant = p_tenant AND expires_at <= now();
        SELECT count(*) INTO live FROM gateway_session_leases WHERE tenant = p_tenant;
        FOR i IN 1 .. coalesce(array_length(p_sids, 1), 0) LOOP
            mine := EXISTS (SELECT 1 FROM gateway_session_leases
                            WHERE tenant = p_tenant AND session_id = p_sids[i]);
            IF NOT mine AND live >= p_limit THEN
                granted := granted || false;
                CONTINUE;
            END IF;
            INSERT INTO gateway_session_leases (tenant, session_id, holder, expires_at)
                VALUES (p_tenant, p_sids[i], p_holders[i], now() + make_interval(secs => p_ttl))
                ON CONFLICT (tenant, session_id)
                DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at;
            IF NOT mine THEN
                live := live + 1;
            END IF;
            granted := granted || true;
        END LOOP;
        RETURN granted;
    END $$""",
    # For each of p_n /starts, in order: 0 (a token was taken) or the seconds to wait.
    """CREATE OR REPLACE FUNCTION gateway_take_starts(
        p_tenant text, p_rate float8, p_burst float8, p_n int) RETURNS float8[]
    LANGUAGE plpgsql AS $$
    DECLARE tokens float8; idle float8; waits float8[] := '{}';
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('gateway_start:' || p_tenant));
        SELECT b.tokens, extract(epoch FROM now() - b.updated_at)::float8 INTO tokens, idle
            FROM gateway_start_buckets b WHERE b.tenant = p_tenant;
        tokens := CASE WHEN tokens IS NULL THEN p_burst
                       ELSE least(p_burst, tokens + greatest(0, idle) * p_rate) END;
        FOR i IN 1 .. p_n LOOP
            IF tokens >= 1 THEN
                tokens := tokens - 1;
                waits := waits || 0::float8;
            ELSE
                waits := waits || ((1 - tokens) / p_rate);
            END IF;
        END LOOP;
        INSERT INTO gateway_start_buckets AS b VALUES (p_tenant, tokens, now())
            ON CONFLICT (tenant) DO UPDATE SET tokens = EXCLUDED.tokens, updated_at = now();
        RETURN waits;
    END $$""",
)

_RENEW = """
INSERT INTO gateway_session_leases (tenant, session_id, holder, expires_at)
SELECT t, s, h, now() + make_interval(secs => %s)
FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(t, s, h)
ON CONFLICT (tenant, session_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE gateway_session_leases.holder = EXCLUDED.holder
RETURNING tenant, session_id
"""


class PostgresRegistry(SessionRegistry):
    """Leases, spent tokens and ``/start`` buckets in PostgreSQL, shared by every process using it."""

    backend = "postgres"
    coalesce = True
    STATE_CONCURRENCY = 8  # connections to PostgreSQL per process; a tenant's calls queue on its lock

    def __init__(
        self, *, database_url: str, lease_ttl_secs: float = 15.0, timeout_secs: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._url = database_url
        self.lease_ttl_secs = lease_ttl_secs
        self._timeout = timeout_secs
        self._pool: AsyncConnectionPool | None = None
        self._fallback = RateLimiter(clock=self._clock)
        self._metrics.session_state_up.labels(self.backend).set(1)

    @contextlib.asynccontextmanager
    async def _transaction(self, operation: str, lock: str | None = None) -> AsyncIterator[Any]:
        """One transaction, bounded by the call timeout, after a per-key advisory lock if ``lock``."""
        if self._pool is None:
            raise ClusterUnavailable("not started")
        try:
            async with (
                self.state_slots,
                self._pool.connection(timeout=self._timeout) as conn,
                conn.transaction(),
            ):
                if lock is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                yield conn
        except (psycopg.Error, PoolTimeout, OSError) as e:
            self._track(operation, e)
            raise ClusterUnavailable(operation) from e
        self._track(operation, None)

    async def _one(self, operation: str, statement: str, params: Any) -> Any:
        """One statement, one round trip, its own transaction; its first column of its one row."""
        if self._pool is None:
            raise ClusterUnavailable("not started")
        try:
            async with self.state_slots, self._pool.connection(timeout=self._timeout) as conn:
                cursor = await conn.execute(statement, params)
                row = await cursor.fetchone()
        except (psycopg.Error, PoolTimeout, OSError) as e:
            self._track(operation, e)
            raise ClusterUnavailable(operation) from e
        self._track(operation, None)
        return None if row is None else row[0]

    async def _rows(self, operation: str, statement: str, params: Any, lock: str | None = None) -> list[Any]:
        async with self._transaction(operation, lock) as conn:
            cursor = await conn.execute(statement, params)
            return list(await cursor.fetchall()) if cursor.description else []

    async def start(self) -> None:
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self.STATE_CONCURRENCY,  # one per call in flight: no call waits for the pool
            open=False,
            name="session-state",
            kwargs={"autocommit": True},
            configure=self._configure,
        )
        await self._pool.open(wait=True, timeout=30.0)
        async with self._transaction("schema", lock="gateway_session_state_schema") as conn:
            for statement in SCHEMA:
                await conn.execute(statement)
        log.info("session_state.ready", backend=self.backend, lease_ttl_secs=self.lease_ttl_secs)
        self._start_renewing()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every statement on these connections is bounded by the call timeout, server side too."""
        await conn.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")

    async def close(self) -> None:
        await self._stop_renewing_and_release()
        if self._pool is not None:
            await self._pool.close()

    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        held = await self._one(
            "acquire",
            "SELECT gateway_acquire_leases(%s, %s, %s, %s, %s)",
            (
                tenant.name,
                [lease.session_id for lease in leases],
                [lease.holder for lease in leases],
                self.lease_ttl_secs,
                tenant.max_sessions,
            ),
        )
        return [bool(h) for h in held]

    async def _release(self, lease: Lease) -> None:
        await self._rows(
            "release",
            "DELETE FROM gateway_session_leases WHERE tenant = %s AND session_id = %s AND holder = %s",
            (lease.tenant, lease.session_id, lease.holder),
        )

    async def _spend_all(self, claims: list[SessionClaims]) -> list[bool]:
        spent = await self._rows(
            "spend_token",
            "INSERT INTO gateway_spent_tokens"
            " SELECT jti, to_timestamp(exp) FROM unnest(%s::text[], %s::float8[]) AS u(jti, exp)"
            " ON CONFLICT DO NOTHING RETURNING jti",
            ([c.session_id for c in claims], [float(c.expires_at) for c in claims]),
        )
        inserted = {jti for (jti,) in spent}
        fresh = []
        for claim in claims:
            fresh.append(claim.session_id in inserted)
            inserted.discard(claim.session_id)  # the same token twice in one batch: fresh once
        return fresh

    async def _take_starts(self, tenant: TenantConfig, count: int) -> list[int]:
        rate = tenant.start_rate
        try:
            waits = await self._one(
                "start_rate",
                "SELECT gateway_take_starts(%s, %s, %s, %s)",
                (tenant.name, float(rate.per_second), float(rate.burst), count),
            )
        except ClusterUnavailable:  # fails open, to this process's bucket
            return [self._fallback.acquire(tenant.name, rate) for _ in range(count)]
        return [0 if wait <= 0 else max(1, math.ceil(wait)) for wait in waits]

    async def renew(self) -> int:
        # Spent tokens are kept until they expire; sweep them here, not in every spend.
        await self._rows("renew", "DELETE FROM gateway_spent_tokens WHERE expires_at < now()", ())
        leases = self._held_leases()
        if not leases:
            return 0
        rows = await self._rows(
            "renew",
            _RENEW,
            (
                self.lease_ttl_secs,
                [lease.tenant for lease in leases],
                [lease.session_id for lease in leases],
                [lease.holder for lease in leases],
            ),
        )
        renewed = {(t, s) for t, s in rows}
        for lease in leases:
            if (lease.tenant, lease.session_id) not in renewed:
                self._forget_taken_over(lease)
        return len(renewed)
