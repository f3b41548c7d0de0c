"""All Prometheus metrics, defined once on an injected registry (one per app, one per test).

Labels are bounded: tenant, outcome, reason, operation, backend, direction, service, kind — never a
user, session or message. Buckets span conversational latency, 5 ms … 10 s.

Where Pipecat measures something itself (TTFB, token usage, user→bot latency in voice mode) the value
comes from its ``MetricsFrame``s and observers (``gateway.pipeline.observers``), not from a second stopwatch.
"""

from __future__ import annotations

import importlib.metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("gateway_sessions_active", "Live sessions", ["tenant"], registry=r)
        self.sessions_total = Counter(
            "gateway_sessions_total", "Ended sessions by outcome", ["tenant", "outcome"], registry=r
        )
        self.rejections_total = Counter(
            "gateway_rejections_total", "Refused connections and requests", ["tenant", "reason"], registry=r
        )
        self.greeting_seconds = Histogram(
            "gateway_greeting_seconds",
            "WebSocket accept to greeting written to the socket; memories: recalled, none, fallback; "
            "source: how it was made (template, llm, fallback = llm mode said the template)",
            ["tenant", "memories", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.memory_seconds = Histogram(
            "gateway_memory_seconds",
            "Memory backend call latency",
            ["tenant", "operation", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.memory_errors_total = Counter(
            "gateway_memory_errors_total",
            "Failed or timed-out memory calls",
            ["tenant", "operation"],
            registry=r,
        )
        self.memory_pending_writes = Gauge(
            "gateway_memory_pending_writes", "Queued memory writes", ["tenant"], registry=r
        )
        self.memory_outbox_full_total = Counter(
            "gateway_memory_outbox_full_total",
            "Memory writes the full outbox refused (queued in memory only: lost if the process dies)",
            ["tenant"],
            registry=r,
        )
        self.consolidation_seconds = Histogram(
            "gateway_memory_consolidation_seconds",
            "One consolidation job: extraction through mem0 and the supersede decision (LLM calls included)",
            ["tenant"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0),
            registry=r,
        )
        self.consolidation_backlog_jobs = Gauge(
            "gateway_memory_consolidation_backlog",
            "Consolidation jobs waiting or running for the tenant (cluster-wide, as last read here)",
            ["tenant"],
            registry=r,
        )
        self.consolidation_total = Counter(
            "gateway_memory_consolidation_total",
            "Consolidation jobs by outcome: consolidated, empty (no new turns), retried, abandoned (after "
            "its attempts), request_failed (a session could not queue one)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.memory_facts_total = Counter(
            "gateway_memory_facts_total",
            "Facts consolidation added, and existing facts it superseded (contradicted or repeated)",
            ["tenant", "event"],
            registry=r,
        )
        self.consolidation_llm_calls_total = Counter(
            "gateway_memory_consolidation_llm_calls_total",
            "Extraction-LLM calls made by consolidation (mem0's extraction and the supersede decision)",
            ["tenant"],
            registry=r,
        )
        self.memory_purged_total = Counter(
            "gateway_memory_purged_total",
            "Memories the retention purge deleted, by kind: turn (stored as said) or fact (extracted)",
            ["tenant", "kind"],
            registry=r,
        )
        self.ttfb_seconds = Histogram(
            "gateway_ttfb_seconds",
            "Pipecat time to first byte per service (llm, stt, tts)",
            ["tenant", "service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.user_bot_latency_seconds = Histogram(
            "gateway_user_bot_latency_seconds",
            "User turn end to first bot output",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_tokens_total = Counter(
            "gateway_llm_tokens_total",
            "LLM tokens by kind (prompt, completion)",
            ["tenant", "kind"],
            registry=r,
        )
        self.tenant_max_sessions = Gauge(
            "gateway_tenant_max_sessions",
            "Configured concurrent-session limit per tenant",
            ["tenant"],
            registry=r,
        )
        self.ws_messages_total = Counter(
            "gateway_ws_messages_total", "WebSocket messages", ["tenant", "direction"], registry=r
        )
        self.tenant_reloads_total = Counter(
            "gateway_tenant_reloads_total",
            "Tenants file reloads by outcome (ok, invalid)",
            ["outcome"],
            registry=r,
        )
        self.resumptions_total = Counter(
            "gateway_session_resumptions_total",
            "Sessions whose client's network dropped, by what became of them: resumed (the client came "
            "back with its token within GATEWAY_RESUME_SECS), expired (it did not; the session ended)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.prestart_total = Counter(
            "gateway_prestart_total",
            "Sessions started at /start, by what became of them: claimed (its client connected here), "
            "replaced (connected asking another serializer), unclaimed (no client in time); missed: a "
            "connect that found no started session here and built one",
            ["tenant", "outcome"],
            registry=r,
        )
        self.session_state_up = Gauge(
            "gateway_session_state_up",
            "1 while the last call to the shared session state (backend: redis, postgres) succeeded",
            ["backend"],
            registry=r,
        )
        self.session_state_errors_total = Counter(
            "gateway_session_state_errors_total",
            "Failed or timed-out calls to the shared session state by operation (acquire, release, "
            "renew, spend_token, start_rate, ping)",
            ["backend", "operation"],
            registry=r,
        )
        # Saturation, per process (gateway.looplag, gateway.pipeline.vad): read at scrape time.
        self.event_loop_lag_seconds = Gauge(
            "gateway_event_loop_lag_seconds",
            "Worst event-loop lag of the last 10 s (a short sleep's oversleep): when it grows, every "
            "session's audio and turn ends wait",
            registry=r,
        )
        self.vad_wait_seconds = Gauge(
            "gateway_vad_wait_seconds",
            "Worst wait of a caller's audio window for its VAD score in the last 10 s (batching and a "
            "busy loop)",
            registry=r,
        )
        self.build_info = Gauge("gateway_build_info", "Versions", ["version", "pipecat", "mem0"], registry=r)
        self.build_info.labels(__version__, _version("pipecat-ai"), _version("mem0ai")).set(1)
        self._limit_labels: set[str] = set()

    # memory.backends.MemoryObserver
    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None:
        self.memory_seconds.labels(tenant, operation, backend).observe(seconds)
        if not ok:
            self.memory_errors_total.labels(tenant, operation).inc()

    def pending_writes(self, tenant: str, delta: int) -> None:
        self.memory_pending_writes.labels(tenant).inc(delta)

    def outbox_full(self, tenant: str) -> None:
        self.memory_outbox_full_total.labels(tenant).inc()

    def consolidation(
        self, tenant: str, outcome: str, seconds: float, added: int, superseded: int, llm_calls: int
    ) -> None:
        self.consolidation_total.labels(tenant, outcome).inc()
        if outcome != "request_failed":
            self.consolidation_seconds.labels(tenant).observe(seconds)
        if added:
            self.memory_facts_total.labels(tenant, "added").inc(added)
        if superseded:
            self.memory_facts_total.labels(tenant, "superseded").inc(superseded)
        if llm_calls:
            self.consolidation_llm_calls_total.labels(tenant).inc(llm_calls)

    def consolidation_backlog(self, tenant: str, jobs: int) -> None:
        self.consolidation_backlog_jobs.labels(tenant).set(jobs)

    def purged(self, tenant: str, kind: str, count: int) -> None:
        self.memory_purged_total.labels(tenant, kind).inc(count)

    def reject(self, tenant: str | None, reason: str) -> None:
        self.rejections_total.labels(tenant or "unknown", reason).inc()

    def publish_tenants(self, limits: dict[str, int]) -> None:
        """Export each active tenant's session limit (tenants gone from the file are dropped), and
        start its gauges and error counters at zero: a dashboard's error ratio or live-session panel
        then reads 0 for a quiet tenant rather than "no data"."""
        for tenant in self._limit_labels - limits.keys():
            self.tenant_max_sessions.remove(tenant)
        for tenant, limit in limits.items():
            self.tenant_max_sessions.labels(tenant).set(limit)
            self.sessions_active.labels(tenant)
            self.memory_pending_writes.labels(tenant)
            self.memory_outbox_full_total.labels(tenant)
            for operation in ("get_all", "search", "add"):
                self.memory_errors_total.labels(tenant, operation)
        self._limit_labels = set(limits)
