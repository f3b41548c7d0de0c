"""Per-tenant request rate limits (token buckets).

One tenant's burst of ``/start`` calls must not starve the others of event-loop time or memory
prefetches, so each tenant has its own bucket. Buckets are per process: behind a load balancer each
replica enforces the limit on its share, which is the usual trade-off without a shared store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.tenants import RateLimit


@dataclass
class TokenBucket:
    limit: RateLimit
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.limit.burst, self.tokens + (now - self.updated) * self.limit.per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.limit.per_second


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, tenant: str, limit: RateLimit) -> int:
        """0 when the request may proceed, else a ``Retry-After`` in whole seconds (at least 1)."""
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None or bucket.limit != limit:  # new tenant, or its limit was reloaded
            bucket = self._buckets[tenant] = TokenBucket(limit, float(limit.burst), now)
        wait = bucket.take(now)
        return 0 if wait == 0.0 else max(1, math.ceil(wait))
