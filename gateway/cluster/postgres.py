"""Cluster-wide session state in the PostgreSQL the gateway already uses (no Redis needed).

For ``serve --workers N`` on one machine, whose workers share the embedded PostgreSQL, and for small
deployments of a few replicas on one shared database. Same leases, spent tokens and ``/start`` buckets
as ``gateway.cluster.redis`` (read its docstring for the semantics and the outage policy, which this
module shares: limits and single use fail closed, the rate falls back to the process's own bucket),
kept in three small tables:

``gateway_session_leases``  (tenant, session_id) → holder, expires_at
``gateway_spent_tokens``    token ID → expires_at
``gateway_start_buckets``   tenant → tokens, updated_at

A lease is taken in one transaction under a per-tenant advisory lock, so concurrent processes cannot
overshoot; times come from the database's clock (``now()``). Expired rows are deleted as they are met.
Each check is one or two round trips on a local socket (≈0.2-0.5 ms); a cluster with many replicas and
high ``/start`` rates is better served by Redis, whose scripts run without row locks or WAL.
"""

from __future__ import annotations

import asyncio
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
)

_ACQUIRE = """
WITH live AS (
    SELECT count(*) AS n, coalesce(bool_or(session_id = %(sid)s), false) AS mine
    FROM gateway_session_leases WHERE tenant = %(tenant)s AND expires_at > now()
)
INSERT INTO gateway_session_leases (tenant, session_id, holder, expires_at)
SELECT %(tenant)s, %(sid)s, %(holder)s, now() + make_interval(secs => %(ttl)s) FROM live
WHERE live.mine OR live.n < %(limit)s
ON CONFLICT (tenant, session_id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
RETURNING 1
"""

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
        self._renewer: asyncio.Task[None] | None = None
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
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (f"{int(self._timeout * 1000)}ms",)
                )
                if lock is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                yield conn
        except (psycopg.Error, PoolTimeout, OSError) as e:
            self._track(operation, e)
            raise ClusterUnavailable(operation) from e
        self._track(operation, None)

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
        )
        await self._pool.open(wait=True, timeout=30.0)
        async with self._transaction("schema", lock="gateway_session_state_schema") as conn:
            for statement in SCHEMA:
                await conn.execute(statement)
        log.info("session_state.ready", backend=self.backend, lease_ttl_secs=self.lease_ttl_secs)
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for lease in self._held_leases():
            await self.release(lease)
        if self._pool is not None:
            await self._pool.close()

    async def _acquire(self, tenant: TenantConfig, lease: Lease) -> bool:
        params = {
            "tenant": tenant.name,
            "sid": lease.session_id,
            "holder": lease.holder,
            "ttl": self.lease_ttl_secs,
            "limit": tenant.max_sessions,
        }
        async with self._transaction("acquire", lock=f"gateway_lease:{tenant.name}") as conn:
            await conn.execute(
                "DELETE FROM gateway_session_leases WHERE tenant = %s AND expires_at <= now()", (tenant.name,)
            )
            cursor = await conn.execute(_ACQUIRE, params)
            return (await cursor.fetchone()) is not None

    async def _release(self, lease: Lease) -> None:
        await self._rows(
            "release",
            "DELETE FROM gateway_session_leases WHERE tenant = %s AND session_id = %s AND holder = %s",
            (lease.tenant, lease.session_id, lease.holder),
        )

    async def _spend(self, claims: SessionClaims) -> bool:
        async with self._transaction("spend_token") as conn:
            await conn.execute("DELETE FROM gateway_spent_tokens WHERE expires_at < now()")
            cursor = await conn.execute(
                "INSERT INTO gateway_spent_tokens VALUES (%s, to_timestamp(%s)) ON CONFLICT DO NOTHING "
                "RETURNING 1",
                (claims.session_id, claims.expires_at),
            )
            return (await cursor.fetchone()) is not None

    async def _take_start(self, tenant: TenantConfig) -> int:
        rate = tenant.start_rate
        try:
            async with self._transaction("start_rate", lock=f"gateway_start:{tenant.name}") as conn:
                cursor = await conn.execute(
                    "SELECT tokens, extract(epoch FROM now() - updated_at)::float8 "
                    "FROM gateway_start_buckets WHERE tenant = %s",
                    (tenant.name,),
                )
                row = await cursor.fetchone()
                tokens = (
                    float(rate.burst)
                    if row is None
                    else min(rate.burst, row[0] + max(0.0, row[1]) * rate.per_second)
                )
                wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate.per_second
                await conn.execute(
                    "INSERT INTO gateway_start_buckets VALUES (%s, %s, now()) "
                    "ON CONFLICT (tenant) DO UPDATE SET tokens = EXCLUDED.tokens, updated_at = now()",
                    (tenant.name, tokens - 1.0 if wait == 0.0 else tokens),
                )
        except ClusterUnavailable:
            return self._fallback.acquire(tenant.name, rate)  # fails open, to this process's bucket
        return 0 if wait == 0.0 else max(1, math.ceil(wait))

    async def renew(self) -> int:
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
