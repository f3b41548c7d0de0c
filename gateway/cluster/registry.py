"""The one owner of the session lifecycle: reserve, prestart, claim by token, run, release, drain.

Routes call a ``SessionRegistry``; nothing else takes or frees a tenant's slot. What must hold across
replicas — a tenant's concurrent sessions, single use of a token, the ``/start`` rate — goes through
four primitives that each implementation provides (``_acquire_all``, ``_release``, ``_spend_all`` and
``_take_starts``, each but ``_release`` for a batch: concurrent calls share round trips,
``gateway.cluster.batching``): ``InProcessRegistry`` keeps them in this process (the embedded default, one
replica), ``gateway.cluster.redis.RedisRegistry`` in Redis, shared by every replica. What only this
process can hold — sessions started at ``/start`` waiting for their socket, greeting prefetches, the
tasks that run sessions — lives here in both cases.

A slot is a **lease** named by the session ID. Whoever builds the session for a token holds it: a
connect that replaces a session started at ``/start`` (another serializer, or another replica) takes
the started session's lease over instead of taking a second one, and the started session's release
then frees nothing. Each lease is released exactly once, by the task that runs its session.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import closecodes
from gateway.cluster.batching import Coalescer
from gateway.limits import RateLimiter
from gateway.logging import get_logger
from gateway.metrics import GatewayMetrics
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims

if TYPE_CHECKING:
    from gateway.pipeline.session import Session

log = get_logger(__name__)


class ClusterUnavailable(Exception):
    """The shared session state cannot be reached; the check it guards fails closed."""


@dataclass(eq=False)
class Lease:
    """One of a tenant's concurrent-session slots, held for one session ID by one holder."""

    tenant: str
    session_id: str
    holder: str
    released: bool = False


@dataclass
class PendingSession:
    """A session started at ``/start``, waiting for its client; ``task`` runs it to the end."""

    session: Session
    lease: Lease
    task: asyncio.Task[str]


@dataclass
class Prefetch:
    task: asyncio.Task[object]
    expires_at: float


@dataclass
class _Local:
    """This process's share: what it holds and runs. Mutated only through the registry."""

    leases: dict[str, dict[str, Lease]] = field(default_factory=dict)  # tenant -> session ID -> lease
    pending: dict[str, PendingSession] = field(default_factory=dict)
    prefetches: dict[str, Prefetch] = field(default_factory=dict)
    sessions: weakref.WeakSet[Session] = field(default_factory=weakref.WeakSet)
    tasks: set[asyncio.Task[str]] = field(default_factory=set)
    running: dict[str, tuple[Session, asyncio.Task[str]]] = field(default_factory=dict)  # by session ID


class SessionRegistry(abc.ABC):
    """Owner of every session of this process and of its share of the cluster-wide limits."""

    backend = "abstract"

    def __init__(
        self,
        *,
        metrics: GatewayMetrics,
        prefetch_ttl_secs: float = 120.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._prefetch_ttl = prefetch_ttl_secs
        self._local = _Local()
        self._draining = False
        self._acquirer: Coalescer[str, tuple[TenantConfig, Lease], bool] = Coalescer(
            lambda _, items: self._acquire_all(items[-1][0], [lease for _, lease in items])
        )
        self._spender: Coalescer[None, SessionClaims, bool] = Coalescer(
            lambda _, claims: self._spend_all(claims)
        )
        self._starter: Coalescer[str, TenantConfig, int] = Coalescer(
            lambda _, tenants: self._take_starts(tenants[-1], len(tenants))
        )
        # Each replica's own name: part of every lease holder, so a log line or a Redis key says who.
        self.replica_id = uuid.uuid4().hex[:12]

    # -- what an implementation provides ------------------------------------------------------------

    @abc.abstractmethod
    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        """Take each lease, in order, if the tenant is below its limit or the session ID already
        holds one (then the lease is taken over); False for each refused at the limit."""

    @abc.abstractmethod
    async def _release(self, lease: Lease) -> None:
        """Free the lease if ``lease.holder`` still holds it."""

    @abc.abstractmethod
    async def _spend_all(self, claims: list[SessionClaims]) -> list[bool]:
        """Mark each token's ID used until it expires; False for each used already (a token twice in
        one batch is fresh only the first time)."""

    @abc.abstractmethod
    async def _take_starts(self, tenant: TenantConfig, count: int) -> list[int]:
        """``count`` ``/start``s from the tenant's bucket, in order: 0, or the ``Retry-After`` seconds."""

    # Whether calls go through a ``Coalescer`` (shared state: one round trip for many callers).
    coalesce = False

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect to shared state, start background work (lease renewal)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what is still held and disconnect."""

    def status(self) -> str:
        """``ok``, or why the shared state is degraded (for ``/readyz``)."""
        return "ok" if self._up else f"{self.backend}_unavailable"

    # -- for implementations whose state is shared (Redis, PostgreSQL) ------------------------------

    _up = True
    lease_ttl_secs = 15.0
    # Calls to the shared state in flight at once, per process; the rest wait their turn, in order.
    # A 500-connect burst otherwise opened hundreds of connections at once and timed out on them
    # (bench/scenarios/burst_workers.py); the timeout of a call starts once it has its turn.
    STATE_CONCURRENCY = 16
    _state_slots: asyncio.Semaphore | None = None

    @property
    def state_slots(self) -> asyncio.Semaphore:
        if self._state_slots is None:
            self._state_slots = asyncio.Semaphore(self.STATE_CONCURRENCY)
        return self._state_slots

    def _track(self, operation: str, error: BaseException | None) -> None:
        """Count a failed call, and log the shared state's going down or coming back, once each."""
        metrics = self._metrics
        if error is not None:
            metrics.session_state_errors_total.labels(self.backend, operation).inc()
        if (error is None) != self._up:
            self._up = error is None
            metrics.session_state_up.labels(self.backend).set(1 if self._up else 0)
            if self._up:
                log.info("session_state.recovered", backend=self.backend, operation=operation)
            else:
                log.error(
                    "session_state.unavailable",
                    backend=self.backend,
                    operation=operation,
                    error=type(error).__name__,
                )

    async def renew(self) -> int:
        """Extend every lease this process holds; a lease another holder took over is dropped."""
        return 0

    async def _renew_forever(self) -> None:
        """Renew every third of the lease TTL; while the state is unreachable, live sessions go on."""
        while True:
            await asyncio.sleep(self.lease_ttl_secs / 3)
            try:
                await self.renew()
            except ClusterUnavailable:
                pass  # counted and logged by _track
            except Exception:
                log.exception("session_state.renew_failed", backend=self.backend)

    _renewer: asyncio.Task[None] | None = None

    def _start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def _stop_renewing_and_release(self) -> None:
        """At close: no more renewals, and every lease this process still holds is given back."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for lease in self._held_leases():
            await self.release(lease)

    def _forget_taken_over(self, lease: Lease) -> None:
        lease.released = True  # another holder's now; nothing of ours to free
        self._local.leases.get(lease.tenant, {}).pop(lease.session_id, None)

    # -- slots --------------------------------------------------------------------------------------

    async def reserve(self, tenant: TenantConfig, session_id: str) -> Lease | None:
        """A slot for the session, or None when the tenant is at its limit (everywhere).

        Raises ``ClusterUnavailable`` when the limit cannot be checked.
        """
        lease = Lease(tenant.name, session_id, f"{self.replica_id}:{uuid.uuid4().hex[:8]}")
        held = (
            await self._acquirer(tenant.name, (tenant, lease))
            if self.coalesce
            else (await self._acquire_all(tenant, [lease]))[0]
        )
        if not held:
            return None
        self._local.leases.setdefault(tenant.name, {})[session_id] = lease
        return lease

    async def release(self, lease: Lease) -> None:
        """Give the slot back (idempotent: only the first call frees anything)."""
        if lease.released:
            return
        lease.released = True
        held = self._local.leases.get(lease.tenant, {})
        if held.get(lease.session_id) is lease:
            del held[lease.session_id]
            if not held:
                self._local.leases.pop(lease.tenant, None)
        try:
            await self._release(lease)
        except ClusterUnavailable:
            # Redis: the lease expires on its own within its TTL, as a dead replica's would.
            log.warning("registry.release_failed")

    def _hand_over(self, pending: PendingSession) -> Lease:
        """The started session's lease, for the session that replaces it (same session ID, same
        holder): the started session's own release becomes a no-op."""
        old = pending.lease
        new = Lease(old.tenant, old.session_id, old.holder)
        old.released = True
        self._local.leases.setdefault(new.tenant, {})[new.session_id] = new
        return new

    def active(self, tenant: str) -> int:
        """Slots this process holds for the tenant (live and started sessions)."""
        return len(self._local.leases.get(tenant, {}))

    def held(self) -> int:
        return sum(len(held) for held in self._local.leases.values())

    def _held_leases(self) -> list[Lease]:
        return [lease for held in self._local.leases.values() for lease in held.values()]

    # -- tokens and rates ---------------------------------------------------------------------------

    async def spend_token(self, claims: SessionClaims) -> bool:
        """Single use: True the first time a token's ID is presented anywhere, False after.

        Raises ``ClusterUnavailable`` when that cannot be known (fails closed).
        """
        if self.coalesce:
            return await self._spender(None, claims)
        return (await self._spend_all([claims]))[0]

    async def allow_start(self, tenant: TenantConfig) -> int:
        """``/start`` rate: 0 when the request may proceed, else its ``Retry-After`` in seconds."""
        if self.coalesce:
            return await self._starter(tenant.name, tenant)
        return (await self._take_starts(tenant, 1))[0]

    # -- sessions of this process -------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def sessions(self) -> weakref.WeakSet[Session]:
        return self._local.sessions

    @property
    def pending(self) -> dict[str, PendingSession]:
        return self._local.pending

    def hold_prefetch(self, session_id: str, task: asyncio.Task[Any]) -> None:
        """Keep a greeting's memory listing for the connect that will present this session's token."""
        now = self._clock()
        prefetches = self._local.prefetches
        # Same TTL for all, in insertion order: expired entries are at the front.
        while prefetches:
            sid, entry = next(iter(prefetches.items()))
            if entry.expires_at > now:
                break
            entry.task.cancel()
            del prefetches[sid]
        prefetches[session_id] = Prefetch(task=task, expires_at=now + self._prefetch_ttl)

    def take_prefetch(self, session_id: str) -> asyncio.Task[Any] | None:
        entry = self._local.prefetches.pop(session_id, None)
        return entry.task if entry is not None else None

    def prestart(self, session: Session, lease: Lease) -> None:
        """Run a session assembled at ``/start`` until its client claims it or it ends unclaimed."""
        task = self.launch(session, lease)
        entry = PendingSession(session=session, lease=lease, task=task)
        self._local.pending[session.id] = entry
        task.add_done_callback(lambda _: self._drop_pending(entry))

    def launch(self, session: Session, lease: Lease) -> asyncio.Task[str]:
        """Run a session in a task of its own (``run``): its life is the registry's, not that of
        whatever request started it (a handler cancelled when its connection drops must not cut the
        session's clean-up short)."""
        self._local.sessions.add(session)  # from now on, draining closes it too
        task = asyncio.create_task(self.run(session, lease), name="session")
        self._local.tasks.add(task)
        task.add_done_callback(self._local.tasks.discard)
        running = self._local.running
        running[session.id] = (session, task)
        task.add_done_callback(
            lambda _: running.pop(session.id) if running.get(session.id, (None,))[0] is session else None
        )
        return task

    def detached(self, session_id: str) -> tuple[Session, asyncio.Task[str]] | None:
        """The session this process runs under that ID, if its client's network dropped and it waits
        for the client to come back (``Session.resume``); its task runs it to the end."""
        found = self._local.running.get(session_id)
        return found if found is not None and found[0].detached else None

    def _drop_pending(self, entry: PendingSession) -> None:
        if self._local.pending.get(entry.session.id) is entry:
            del self._local.pending[entry.session.id]

    async def claim(self, session_id: str, serializer: str) -> tuple[PendingSession | None, Lease | None]:
        """The started session for a token just spent, if it is here and speaks ``serializer``.

        Otherwise, if one was started here, it is closed and its lease is handed over (second value)
        for the session the caller builds instead: one slot, accounted once.
        """
        pending = self._local.pending.pop(session_id, None)
        if pending is None:
            return None, None
        if not pending.task.done() and pending.session.serializer == serializer:
            self._metrics.prestart_total.labels(pending.lease.tenant, "claimed").inc()
            return pending, None
        if not pending.task.done():
            self._metrics.prestart_total.labels(pending.lease.tenant, "replaced").inc()
        lease = None if pending.task.done() else self._hand_over(pending)
        await pending.session.close(closecodes.NORMAL, "replaced")
        return None, lease

    def count_missed(self, tenant: str) -> None:
        """A connect that found no started session here (or a replaced one) and builds its own."""
        self._metrics.prestart_total.labels(tenant, "missed").inc()

    async def run(self, session: Session, lease: Lease) -> str:
        """Run one session to its end, then release its lease. (When its pipeline is built and
        started is the session's business: ``gateway.pipeline.builds``.)"""
        self._local.sessions.add(session)
        try:
            outcome = await session.run()
            if outcome == "unclaimed":
                self._metrics.prestart_total.labels(lease.tenant, "unclaimed").inc()
            return outcome
        finally:
            self._local.sessions.discard(session)
            await self.release(lease)

    def begin_drain(self) -> None:
        self._draining = True

    async def drain(self, grace: float, *, wait: float = 0.0, closing_line: str | None = None) -> None:
        """Stop admitting; give live sessions ``wait`` seconds to end on their own; then close each
        still live with 1001 (after ``closing_line``, if any); wait up to ``grace`` for them to store
        their last words and give their leases back.

        Sessions started at ``/start`` that no client claimed yet are ended at once: nobody waits for
        them, and their slots are better spent on another replica.
        """
        self._draining = True
        for pending in list(self._local.pending.values()):
            await pending.session.close(closecodes.GOING_AWAY, "server shutting down")
        log.info("gateway.draining", sessions=len(self._local.sessions), wait_secs=wait)
        deadline = asyncio.get_running_loop().time() + wait
        while self._local.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        sessions = list(self._local.sessions)
        if sessions:
            log.info("gateway.drain_closing", sessions=len(sessions))
        await asyncio.gather(
            *(
                s.close(closecodes.GOING_AWAY, "server shutting down", farewell=closing_line)
                for s in sessions
            ),
            return_exceptions=True,
        )
        if self._local.tasks:
            await asyncio.wait(set(self._local.tasks), timeout=grace)
        for entry in self._local.prefetches.values():
            entry.task.cancel()
        self._local.prefetches.clear()


class InProcessRegistry(SessionRegistry):
    """Everything in this process: right for one replica (the embedded default)."""

    backend = "in_process"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._holders: dict[str, dict[str, str]] = {}  # tenant -> session ID -> holder
        self._used: dict[str, float] = {}  # token ID -> its expiry (wall clock)
        self._limiter = RateLimiter(clock=self._clock)

    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        holders = self._holders.setdefault(tenant.name, {})
        held = []
        for lease in leases:
            if lease.session_id not in holders and len(holders) >= tenant.max_sessions:
                held.append(False)
                continue
            holders[lease.session_id] = lease.holder
            held.append(True)
        return held

    async def _release(self, lease: Lease) -> None:
        holders = self._holders.get(lease.tenant, {})
        if holders.get(lease.session_id) == lease.holder:
            del holders[lease.session_id]

    async def _spend_all(self, claims: list[SessionClaims]) -> list[bool]:
        now = time.time()
        if len(self._used) > 1024:
            self._used = {k: exp for k, exp in self._used.items() if exp > now}
        fresh = []
        for claim in claims:
            fresh.append(claim.session_id not in self._used)
            self._used.setdefault(claim.session_id, claim.expires_at)
        return fresh

    async def _take_starts(self, tenant: TenantConfig, count: int) -> list[int]:
        return [self._limiter.acquire(tenant.name, tenant.start_rate) for _ in range(count)]
