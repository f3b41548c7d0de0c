"""Cluster-wide session state in Redis (``GATEWAY_REDIS_URL``), shared by every replica.

Keys (``<p>`` is ``GATEWAY_REDIS_PREFIX``, default ``mgw``; ``{tenant}`` is a Redis Cluster hash tag,
so one tenant's keys share a slot and its scripts may touch them together):

``<p>:{<tenant>}:leases``   sorted set: session ID → lease expiry (ms, Redis server clock)
``<p>:{<tenant>}:holders``  hash: session ID → holder (``<replica>:<nonce>``)
``<p>:{<tenant>}:start``    hash: the ``/start`` token bucket (``tokens``, ``ts``)
``<p>:jti:<token ID>``      a spent token, expiring when the token does

Every check-and-update is one Lua script, so concurrent replicas cannot overshoot; scripts read the time
from Redis (``TIME``), so replicas' clocks don't matter. A script (or, for spent tokens, a pipeline)
takes the calls of a tenant that arrived while its previous one was in flight, in order, in one round
trip (``gateway.cluster.batching``). A live replica renews its leases every third of
``GATEWAY_LEASE_TTL_SECS`` (default 15 s); a replica that dies stops renewing and its leases expire
within the TTL, giving the tenant its capacity back.

When Redis cannot be reached (each call is bounded by ``GATEWAY_REDIS_TIMEOUT_SECS``), per check:

* **token single use: fails closed.** A connect is refused (1013, ``cluster_unavailable``): admitting a
  token we cannot mark spent would let it open a second session on another replica.
* **concurrent-session limit: fails closed.** ``/start`` answers 503 (``cluster_unavailable``,
  ``Retry-After``): the limit is the tenant's contract (and bill); admitting blind would put N times the
  limit behind N replicas, the very thing this module exists to prevent.
* **``/start`` rate: fails open to this replica's own bucket.** The bucket guards the gateway from one
  tenant's burst; each replica's bucket still does that for its own event loop and memory.
* **live sessions continue**; their leases are renewed again once Redis is back (a lease that expired
  meanwhile is re-added, even if that puts the tenant over its limit for a moment).

Each failure counts in ``gateway_session_state_errors_total{backend="redis",operation}``;
``gateway_session_state_up{backend="redis"}`` is 0 while the last call failed, and the transition is
logged once (``session_state.unavailable`` / ``session_state.recovered``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.cluster.registry import ClusterUnavailable, Lease, SessionRegistry
from gateway.limits import RateLimiter
from gateway.logging import get_logger
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims

log = get_logger(__name__)
T = TypeVar("T")

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: leases, holders. ARGV: limit, ttl ms, then (session ID, holder) pairs. For each, in order: 1 if
# it holds a lease now (below the limit, or it held one: taken over), 0 if refused at the limit.
ACQUIRE = (
    _NOW_MS
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired do redis.call('HDEL', KEYS[2], expired[i]) end
end
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) and redis.call('ZCARD', KEYS[1]) >= limit then
    out[#out + 1] = 0
  else
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    out[#out + 1] = 1
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return out
"""
)

# KEYS: leases, holders. ARGV: session ID, holder. Frees the lease only if this holder holds it.
RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: leases, holders. ARGV: ttl ms, then (session ID, holder) pairs. For each: 1 renewed (or re-added
# after it expired), 0 taken over by another holder (no longer ours to renew).
RENEW = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == false or owner == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return out
"""
)

# KEYS: bucket. ARGV: per second, burst, count. For each of count /starts, in order, the seconds to wait
# (as a string): "0" if granted.
TAKE_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local ts = tonumber(redis.call('HGET', KEYS[1], 'ts'))
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local out = {}
for i = 1, tonumber(ARGV[3]) do
  if tokens >= 1 then tokens = tokens - 1; out[i] = "0" else out[i] = tostring((1 - tokens) / rate) end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return out
"""


class RedisRegistry(SessionRegistry):
    """Leases, spent tokens and ``/start`` buckets in Redis; sessions themselves stay in this process."""

    backend = "redis"
    coalesce = True

    def __init__(
        self,
        *,
        url: str,
        prefix: str = "mgw",
        lease_ttl_secs: float = 15.0,
        timeout_secs: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._prefix = prefix
        self.lease_ttl_secs = lease_ttl_secs
        self._ttl_ms = int(lease_ttl_secs * 1000)
        self._timeout = timeout_secs
        # One attempt per call (no hidden retries with backoff): the caller's check decides what a
        # failure means, and the call must return within its timeout.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_secs,
            socket_connect_timeout=timeout_secs,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
            decode_responses=True,
            # Calls are bounded by ``state_slots``; the renewal loop may need one more.
            max_connections=self.STATE_CONCURRENCY + 2,
        )
        self._acquire_script = self._redis.register_script(ACQUIRE)
        self._release_script = self._redis.register_script(RELEASE)
        self._renew_script = self._redis.register_script(RENEW)
        self._start_script = self._redis.register_script(TAKE_START)
        self._fallback = RateLimiter(clock=self._clock)
        self._metrics.session_state_up.labels(self.backend).set(1)

    def _key(self, tenant: str, what: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:{what}"

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        """One Redis round trip under the timeout; failures are counted and raise ``ClusterUnavailable``."""
        try:
            async with self.state_slots, asyncio.timeout(self._timeout):
                result = await call
        except (RedisError, OSError, TimeoutError) as e:
            self._track(operation, e)
            raise ClusterUnavailable(operation) from e
        self._track(operation, None)
        return result

    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        keys = [self._key(tenant.name, "leases"), self._key(tenant.name, "holders")]
        args: list[str | int] = [tenant.max_sessions, self._ttl_ms]
        for lease in leases:
            args += [lease.session_id, lease.holder]
        held = await self._call("acquire", self._acquire_script(keys=keys, args=args))
        return [int(h) == 1 for h in held]

    async def _release(self, lease: Lease) -> None:
        keys = [self._key(lease.tenant, "leases"), self._key(lease.tenant, "holders")]
        await self._call("release", self._release_script(keys=keys, args=[lease.session_id, lease.holder]))

    async def _spend_all(self, claims: list[SessionClaims]) -> list[bool]:
        # One round trip for the batch (a pipeline, not a transaction: each SET NX stands alone). The
        # key lives as long as the token; a later presentation finds it.
        pipe = self._redis.pipeline(transaction=False)
        for claim in claims:
            pipe.set(
                f"{self._prefix}:jti:{claim.session_id}",
                "1",
                nx=True,
                pxat=max(int(claim.expires_at * 1000), 1),
            )
        return [bool(fresh) for fresh in await self._call("spend_token", pipe.execute())]

    async def _take_starts(self, tenant: TenantConfig, count: int) -> list[int]:
        rate = tenant.start_rate
        try:
            waits = await self._call(
                "start_rate",
                self._start_script(
                    keys=[self._key(tenant.name, "start")], args=[rate.per_second, rate.burst, count]
                ),
            )
        except ClusterUnavailable:  # fails open, to this replica's bucket
            return [self._fallback.acquire(tenant.name, rate) for _ in range(count)]
        return [0 if float(w) <= 0 else max(1, math.ceil(float(w))) for w in waits]

    async def renew(self) -> int:
        """Renew every lease this replica holds (one script per tenant); returns how many it renewed.

        A lease another holder took over (its session was rebuilt elsewhere) is dropped from ours.
        """
        renewed = 0
        by_tenant: dict[str, list[Lease]] = {}
        for lease in self._held_leases():
            by_tenant.setdefault(lease.tenant, []).append(lease)
        for tenant, leases in by_tenant.items():
            args: list[Any] = [self._ttl_ms]
            for lease in leases:
                args += [lease.session_id, lease.holder]
            keys = [self._key(tenant, "leases"), self._key(tenant, "holders")]
            flags = await self._call("renew", self._renew_script(keys=keys, args=args))
            for lease, flag in zip(leases, flags, strict=True):
                if int(flag):
                    renewed += 1
                else:
                    self._forget_taken_over(lease)
        return renewed

    async def start(self) -> None:
        try:
            await self._call("ping", self._redis.ping())
            log.info("session_state.ready", backend=self.backend, lease_ttl_secs=self.lease_ttl_secs)
        except ClusterUnavailable:
            pass  # start anyway: new sessions wait for Redis, the rest of the gateway works
        self._start_renewing()

    async def close(self) -> None:
        await self._stop_renewing_and_release()
        await self._redis.aclose()
