"""The benchmark harness's interface and the helpers every scenario shares.

A scenario is a module ``bench/scenarios/<name>.py`` exposing ``NAME: str``, ``TITLE: str`` and
``async def run(ctx: BenchContext) -> ScenarioResult``; ``python -m bench`` discovers and runs them
(``bench/runner.py``). Everything a scenario measures runs on this machine's loopback: a real gateway
in-process (real aiohttp server, embedded PostgreSQL under a temp dir), real aiohttp WebSocket clients
speaking RTVI JSON, and the baselines beside it in the same process and run.

Keep the names here stable: scenarios written by other people import them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("MEM0_TELEMETRY", "false")

import aiohttp
from aiohttp import web
from pydantic import SecretStr

# --------------------------------------------------------------------------------------------------
# The interface (fixed: scenarios code against it)
# --------------------------------------------------------------------------------------------------


@dataclass
class BenchContext:
    """What the runner hands each scenario.

    ``smoke``: tiny sizes, a few seconds, for CI (results are checked for shape, never for timing).
    ``out_dir``: where the scenario may write files (plots); JSON/Markdown are written by the runner.
    ``progress(label, done, total)``: report progress; call it as often as you like.
    """

    smoke: bool
    out_dir: Path
    progress: Callable[[str, int, int], None]
    # A PostgreSQL the run's scenarios may share (``start_gateway(database_url=ctx.database_url)``) to
    # skip an initdb (≈3 s) each; None: every gateway starts its own embedded server. Sharing scenarios
    # must use tenant names of their own: a tenant's table outlives its gateway.
    database_url: str | None = None


@dataclass
class Target:
    """A goal from the issue: ``measured`` against ``limit`` (``met`` says whether it holds)."""

    name: str
    measured: float
    limit: float
    unit: str
    met: bool


@dataclass
class ScenarioResult:
    """One scenario's outcome: table rows (keys are the columns), targets, notes and plot files."""

    name: str
    title: str
    rows: list[dict[str, Any]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def target_at_most(name: str, measured: float, limit: float, unit: str) -> Target:
    """A ``Target`` that is met when ``measured <= limit`` (NaN — nothing measured — is not met)."""
    return Target(name, measured, limit, unit, not math.isnan(measured) and measured <= limit)


def target_at_least(name: str, measured: float, limit: float, unit: str) -> Target:
    """A ``Target`` that is met when ``measured >= limit``."""
    return Target(name, measured, limit, unit, not math.isnan(measured) and measured >= limit)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(seconds: Sequence[float], digits: int = 2) -> dict[str, float]:
    """``n``, p50/p95/p99/mean/min/max in milliseconds from samples in seconds (NaN when empty).

    With fewer than 100 samples p99 is the interpolated top of what there is; report ``n`` beside it.
    """
    ms = [s * 1000.0 for s in seconds]

    def r(x: float) -> float:
        return round(x, digits) if not math.isnan(x) else math.nan

    return {
        "n": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p95_ms": r(percentile(ms, 95)),
        "p99_ms": r(percentile(ms, 99)),
        "mean_ms": r(statistics.fmean(ms)) if ms else math.nan,
        "min_ms": r(min(ms)) if ms else math.nan,
        "max_ms": r(max(ms)) if ms else math.nan,
    }


def ratio(a: float, b: float, digits: int = 2) -> float:
    """``a / b`` rounded, NaN when either is missing or ``b`` is zero."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return round(a / b, digits)


def machine_info() -> dict[str, Any]:
    """Platform, CPUs, Python and the versions of what is measured, plus the date (UTC)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "pipecat": version("pipecat-ai"),
        "mem0": version("mem0ai"),
        "aiohttp": version("aiohttp"),
        "qdrant_client": version("qdrant-client"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------------
# A real gateway in-process
# --------------------------------------------------------------------------------------------------


@dataclass
class BenchGateway:
    """A running gateway: its base ``url`` (``http://127.0.0.1:<port>``), the first tenant's ``tenant``
    name and API ``key`` (all of them in ``keys``), the aiohttp ``app`` (state under ``gateway.app``'s
    AppKeys), its metrics registry, data dir and, when asked for, the fake LLM it talks to."""

    app: web.Application
    url: str
    tenant: str
    key: str
    keys: dict[str, str]
    metrics: Any  # gateway.metrics.GatewayMetrics
    data_dir: Path
    llm: Any = None  # tests.fake_llm.FakeLLM when started with llm=True

    @property
    def database_url(self) -> str:
        """The PostgreSQL the gateway's memory uses (embedded unless one was given)."""
        from gateway.keys import backends_key

        return self.app[backends_key].database_url

    async def backend(self, tenant: str | None = None) -> Any:
        """The tenant's shared ``memory.backends.TenantMemory`` (the object every session uses)."""
        from gateway.keys import backends_key, tenants_key

        config = self.app[tenants_key].require(tenant or self.tenant)
        return await self.app[backends_key].for_tenant(config.name, config.memory)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until no session is live and every queued memory write has landed."""
        from gateway.keys import backends_key, registry_key

        registry = self.app[registry_key]
        backends = self.app[backends_key]
        async with asyncio.timeout(timeout):
            while len(registry.sessions) or registry.held() or backends.pending_writes():
                await asyncio.sleep(0.01)


@asynccontextmanager
async def start_gateway(
    *,
    tenants: Sequence[str] = ("bench",),
    data_dir: Path | None = None,
    database_url: str | None = None,
    llm: bool = False,
    max_sessions: int = 10_000,
    embed_model: Any = None,
    runtime_tuning: bool | None = None,
    tenant_settings: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[BenchGateway]:
    """Start a real gateway on ``127.0.0.1:<free port>``; stop it (and its PostgreSQL) on exit.

    Memory is an embedded PostgreSQL under ``data_dir`` (default: a fresh temp dir, removed afterwards)
    unless ``database_url`` names one. Every tenant gets a fresh key, ``max_sessions`` and a ``/start``
    rate limit high enough never to refuse a benchmark. ``llm=True`` starts the local fake
    OpenAI-compatible LLM (``tests/fake_llm.py``) and points the tenants at it; without it user turns
    get an RTVI error, but the greeting (which needs no LLM) works. Extra keyword arguments override
    ``gateway.settings.Settings`` fields (``memory_workers=…``, ``greeting_deadline_secs=…``);
    ``tenant_settings`` are merged into every tenant's entry (``{"greeting": {"after": "connect"}}``).
    ``runtime_tuning`` applies the process tuning ``memory-gateway serve`` applies after start-up
    (``gateway.runtime``, e.g. the garbage collector's) — to this whole process, baselines included;
    default: on unless the environment says ``BENCH_RUNTIME_TUNING=0`` (the smoke test does, so as not
    to retune the test process).
    """
    from gateway.app import create_app, server_options
    from gateway.metrics import GatewayMetrics
    from gateway.settings import Settings
    from gateway.tenants import RateLimit, TenantConfig, TenantRegistry, hash_key, new_key
    from memory.backends import MemoryBackends

    owned_dir = data_dir is None
    # Short path: PostgreSQL's unix socket lives in the data dir and socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mgw-bench-")) if data_dir is None else data_dir
    fake: Any = None
    runner: web.AppRunner | None = None
    try:
        if llm:
            from tests.fake_llm import FakeLLM

            fake = FakeLLM()
            await fake.start()
        keys: dict[str, str] = {}
        configs = []
        for name in tenants:
            keys[name] = new_key()
            spec: dict[str, Any] = {
                "name": name,
                "api_keys": [hash_key(keys[name])],
                "max_sessions": max_sessions,
                "start_rate": RateLimit(per_second=1e6, burst=1_000_000),
            }
            if fake is not None:
                spec["llm"] = {"base_url": fake.base_url, "model": "fake-model"}
            configs.append(TenantConfig.model_validate({**spec, **(tenant_settings or {})}))
        config = Settings(
            data_dir=root,
            database_url=database_url,
            token_secret=SecretStr("bench-" * 8),
            port=0,
            **settings,
        )
        metrics = GatewayMetrics()
        backends = MemoryBackends(
            data_dir=root,
            database_url=config.database_url,
            max_workers=config.memory_workers,
            call_timeout=config.memory_call_timeout_secs,
            pool_size=config.memory_pool_size,
            observer=metrics,
            embed_model=embed_model,
        )
        app = create_app(config, tenants=TenantRegistry(configs), metrics=metrics, backends=backends)
        if runtime_tuning if runtime_tuning is not None else os.environ.get("BENCH_RUNTIME_TUNING") != "0":
            _serve_runtime_tuning(app)
        runner = web.AppRunner(app, access_log=None, **server_options(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        first = tenants[0]
        yield BenchGateway(
            app=app,
            url=f"http://127.0.0.1:{port}",
            tenant=first,
            key=keys[first],
            keys=keys,
            metrics=metrics,
            data_dir=root,
            llm=fake,
        )
    finally:
        if runner is not None:
            await runner.cleanup()
        if fake is not None:
            await fake.close()
        if owned_dir:
            shutil.rmtree(root, ignore_errors=True)


def _serve_runtime_tuning(app: web.Application) -> None:
    """Hook in what ``gateway.cli serve`` adds to the app after start-up, where this gateway has it."""
    try:
        from gateway import runtime
    except ImportError:
        return
    hook = getattr(runtime, "tune_gc_on_startup", None)
    if hook is not None:
        app.on_startup.append(hook)


# --------------------------------------------------------------------------------------------------
# RTVI clients
# --------------------------------------------------------------------------------------------------


def rtvi(type_: str, data: dict[str, Any] | None = None) -> str:
    """One RTVI JSON client message."""
    return json.dumps({"label": "rtvi-ai", "type": type_, "id": type_, "data": data or {}})


@dataclass
class GreetingTiming:
    """``total``: POST /start → greeting's ``bot-llm-stopped``; ``connect``: WebSocket connect → same."""

    total: float
    connect: float
    text: str


async def start_session(
    http: aiohttp.ClientSession, url: str, key: str, user_id: str, *, agent_id: str | None = None
) -> str:
    """``POST /start`` for ``user_id``; return the ``wsUrl`` (RTVI JSON serializer)."""
    body: dict[str, Any] = {"user_id": user_id, "serializer": "rtvi"}
    if agent_id:
        body["agent_id"] = agent_id
    async with http.post(
        f"{url}/start",
        json={"transport": "websocket", "body": body},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"/start answered {resp.status}: {await resp.text()}")
        return str((await resp.json())["wsUrl"])


async def read_bot_turn(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30.0) -> str:
    """Read RTVI messages until ``bot-llm-stopped``; return the ``bot-llm-text`` it carried."""
    parts: list[str] = []
    async with asyncio.timeout(timeout):
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            kind = event.get("type")
            if kind == "bot-llm-text":
                parts.append(event["data"]["text"])
            elif kind == "bot-llm-stopped":
                return "".join(parts)
            elif kind == "error":
                raise RuntimeError(f"bot error: {event.get('data')}")
    raise RuntimeError(f"socket closed before the bot's turn ended (close code {ws.close_code})")


async def greet_timed(
    http: aiohttp.ClientSession,
    url: str,
    key: str,
    user_id: str,
    *,
    agent_id: str | None = None,
    timeout: float = 30.0,
    client_ready: bool = True,
) -> GreetingTiming:
    """One session: ``POST /start``, connect, ``client-ready`` (as every RTVI client says on connect;
    the gateway greets after answering it) unless ``client_ready=False``, read the greeting, close;
    both spans and the text. The socket is closed after the greeting (outside the timed span).
    """
    started = time.perf_counter()
    ws_url = await start_session(http, url, key, user_id, agent_id=agent_id)
    connecting = time.perf_counter()
    async with http.ws_connect(ws_url) as ws:
        if client_ready:
            await ws.send_str(rtvi("client-ready", {"version": "2.0.0", "about": {"library": "bench"}}))
        text = await read_bot_turn(ws, timeout)
        done = time.perf_counter()
    return GreetingTiming(total=done - started, connect=done - connecting, text=text)


async def greet_once(
    http: aiohttp.ClientSession, url: str, key: str, user_id: str, *, agent_id: str | None = None
) -> float:
    """Seconds from ``POST /start`` to the greeting's ``bot-llm-stopped`` (the whole caller-visible wait;
    the gateway starts fetching memories at ``/start``, so that request is inside the span)."""
    return (await greet_timed(http, url, key, user_id, agent_id=agent_id)).total


async def say_timed(
    ws: aiohttp.ClientWebSocketResponse, text: str, timeout: float = 30.0
) -> tuple[float, str]:
    """Send one RTVI ``send-text`` user turn (text reply, no audio); return (seconds to the reply's
    ``bot-llm-stopped``, reply text). Needs a gateway started with ``llm=True``."""
    started = time.perf_counter()
    options = {"run_immediately": True, "audio_response": False}
    await ws.send_str(rtvi("send-text", {"content": text, "options": options}))
    reply = await read_bot_turn(ws, timeout)
    return time.perf_counter() - started, reply


# --------------------------------------------------------------------------------------------------
# Memories
# --------------------------------------------------------------------------------------------------

_SUBJECTS = (
    "sailing chess jazz hiking espresso gardening astronomy pottery marathons baking photography kayaking "
    "poetry cycling birdwatching"
).split()
_VERBS = ["loves", "started", "gave up", "is learning", "teaches", "dreams about", "reads about"]
_WHEN = ["on weekends", "every morning", "since 2019", "with her sister", "in Lisbon", "after work"]


def memory_texts(n: int, seed: int = 7, prefix: str = "Ada") -> list[str]:
    """``n`` distinct, varied, deterministic user statements (varied so embeddings differ)."""
    rng = random.Random(seed)
    return [
        f"{prefix} {rng.choice(_VERBS)} {rng.choice(_SUBJECTS)} {rng.choice(_WHEN)} (note {i})"
        for i in range(n)
    ]


def seed_store(
    memory: Any,
    texts: Sequence[str],
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    run_id: str | None = None,
    role: str = "user",
    metadata: dict[str, Any] | None = None,
    batch: int = 500,
) -> float:
    """Write ``texts`` into a mem0 ``Memory`` as raw (``infer=False``) memories, fast; return seconds.

    Blocking; run it in a thread. Rows are exactly what ``Memory.add(..., infer=False)`` writes to the
    vector store (same payload keys, IDs, hash, ``text_lemmatized`` and real embeddings from the
    memory's own embedder), embedded with ``embed_batch`` and inserted through the store's ``insert``
    in batches, with increasing ``created_at`` so "newest first" is well defined. mem0's SQLite history
    (an audit log that ``get_all``/``search`` never read) is not written: that is where ``add()`` spends
    most of its 6-8 ms per memory.
    """
    from mem0.memory.main import _build_filters_and_metadata

    started = time.perf_counter()
    base, _ = _build_filters_and_metadata(
        user_id=user_id, agent_id=agent_id, run_id=run_id, input_metadata=metadata
    )
    store = memory.vector_store
    embed_batch = getattr(memory.embedding_model, "embed_batch", None)
    first = datetime.now(UTC) - timedelta(seconds=len(texts) + 1)
    with _bulk_load(store, len(texts)):
        _insert_batches(store, memory, texts, base, role, first, batch, embed_batch)
    return time.perf_counter() - started


def _insert_batches(
    store: Any,
    memory: Any,
    texts: Sequence[str],
    base: dict[str, Any],
    role: str,
    first: datetime,
    batch: int,
    embed_batch: Any,
) -> None:
    import uuid

    from mem0.utils.lemmatization import lemmatize_for_bm25

    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        if embed_batch is not None:
            vectors = embed_batch(chunk, "add")
        else:
            vectors = [memory.embedding_model.embed(text, "add") for text in chunk]
        payloads = []
        for offset, text in enumerate(chunk):
            created = (first + timedelta(milliseconds=start + offset)).isoformat(timespec="microseconds")
            payloads.append(
                {
                    **base,
                    "role": role,
                    "data": text,
                    "hash": hashlib.md5(text.encode()).hexdigest(),
                    "created_at": created,
                    "updated_at": created,
                    "text_lemmatized": lemmatize_for_bm25(text),
                }
            )
        store.insert(vectors=vectors, payloads=payloads, ids=[str(uuid.uuid4()) for _ in chunk])


@contextmanager
def _bulk_load(store: Any, rows: int) -> Iterator[None]:
    """For a big load into a PostgreSQL store, drop its HNSW indexes and rebuild them afterwards, then
    ``ANALYZE`` (any load); into a local Qdrant store, turn off SQLite's per-point fsync meanwhile.

    Inserting into a live HNSW graph costs ≈1.4 ms per row here; building it once over the loaded
    table ≈0.25 ms. The rebuilt index has the same name and definition, so readers see the same table.
    """
    sqlite = _qdrant_local_storage(store)
    if sqlite:
        # Local Qdrant commits (and fsyncs) every point on its own; the seeding instance is closed
        # before anything reads, and each reader opens the files with SQLite's defaults again.
        for connection in sqlite:
            connection.execute("PRAGMA synchronous=OFF")
        yield
        for connection in sqlite:
            connection.execute("PRAGMA synchronous=FULL")
        return
    pool = getattr(store, "connection_pool", None)
    if pool is None or not hasattr(store, "_get_cursor"):
        yield
        return
    store._ensure_collection()
    if rows < 1000:
        yield
        _analyze(store)
        return
    with store._get_cursor(commit=True) as cur:
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexdef ILIKE %s",
            (store.collection_name, "% USING hnsw %"),
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX IF EXISTS "{name}"')
    try:
        yield
    finally:
        with store._get_cursor(commit=True) as cur:
            for _, definition in indexes:
                cur.execute(definition)
    _analyze(store)


def _qdrant_local_storage(store: Any) -> list[Any]:
    """The SQLite connections behind a local (embedded) Qdrant store, or [] for any other store."""
    local = getattr(getattr(store, "client", None), "_client", None)
    collections = getattr(local, "collections", None)
    if not isinstance(collections, dict):
        return []
    found = []
    for collection in collections.values():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if connection is not None and hasattr(connection, "execute"):
            found.append(connection)
    return found


def _analyze(store: Any) -> None:
    """Refresh the planner's statistics, as autovacuum would within a minute of organic growth: without
    them the planner takes a freshly loaded user for a handful of rows and picks plans for that."""
    with store._get_cursor(commit=True) as cur:
        cur.execute(f'ANALYZE "{store.collection_name}"')


def verify_seeded(memory: Any, filters: dict[str, str], texts: Sequence[str]) -> None:
    """Check through mem0's public API that seeded rows read back: every one listed, the newest first,
    and a search for one of them finds it. Raises ``AssertionError`` otherwise."""
    if not texts:
        return
    listed = memory.get_all(filters=filters, top_k=len(texts))["results"]
    if len(listed) != len(texts):
        raise AssertionError(f"seeded {len(texts)} memories, get_all returned {len(listed)}")
    probe = texts[len(texts) // 2]
    found = memory.search(probe, filters=filters, top_k=5)["results"]
    if probe not in [m["memory"] for m in found]:
        raise AssertionError(f"search did not find a seeded memory: {probe!r}")


async def seed_memories(
    app: web.Application,
    tenant: str,
    user_id: str,
    n: int,
    *,
    agent_id: str | None = None,
    texts: Sequence[str] | None = None,
    verify: bool = True,
) -> float:
    """Give ``user_id`` of ``tenant`` ``n`` memories through the tenant's own backend; return seconds.

    Same rows the gateway would store for what the user said (tenant-prefixed IDs, the gateway's
    metadata), written by ``seed_store``; with ``verify`` they are read back through mem0 (``get_all``
    and ``search``) before this returns. ≈0.3 s per 1,000 memories instead of ≈7 s through ``add()``.
    """
    from gateway.keys import backends_key, tenants_key
    from memory.scope import MemoryScope

    config = app[tenants_key].require(tenant)
    backend = await app[backends_key].for_tenant(config.name, config.memory)
    scope = MemoryScope(tenant, user_id=user_id, agent_id=agent_id)
    items = list(texts) if texts is not None else memory_texts(n, prefix=user_id)
    ids = scope.storage_ids()
    seconds = await asyncio.to_thread(
        lambda: seed_store(
            backend.client,
            items[:n],
            user_id=ids.get("user_id"),
            agent_id=ids.get("agent_id"),
            metadata={"platform": "pipecat", "source": "memory-gateway"},
        )
    )
    if verify:
        await asyncio.to_thread(verify_seeded, backend.client, scope.retrieval_filters(), items[:n])
    return seconds


# --------------------------------------------------------------------------------------------------
# The floor: a bare aiohttp WebSocket echo
# --------------------------------------------------------------------------------------------------


@asynccontextmanager
async def start_echo_server() -> AsyncIterator[str]:
    """A bare aiohttp WebSocket echo server on a loopback port; yields its ``ws://`` URL."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    async with serve_on_loopback(app) as base:
        yield base.replace("http://", "ws://") + "/ws"


@asynccontextmanager
async def serve_on_loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on ``127.0.0.1:<free port>`` (no access log); yield its ``http://`` base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def echo_once(http: aiohttp.ClientSession, ws_url: str) -> float:
    """Seconds to connect, send one message and receive its echo (the close is outside the span)."""
    started = time.perf_counter()
    async with http.ws_connect(ws_url) as ws:
        await ws.send_str(rtvi("client-ready"))
        await ws.receive(timeout=10)
        elapsed = time.perf_counter() - started
    return elapsed


async def post_then_echo(http: aiohttp.ClientSession, base: str, ws_url: str) -> float:
    """Seconds for a bare ``POST {base}/start`` (read to its JSON) and then ``echo_once``: the two round
    trips a client makes to a gateway (``/start``, then the socket), with no work behind them."""
    started = time.perf_counter()
    async with http.post(
        f"{base}/start",
        data=json.dumps({"transport": "websocket", "body": {"user_id": "x"}}),
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    ) as resp:
        await resp.json()
    return (time.perf_counter() - started) + await echo_once(http, ws_url)


async def ws_greeting_timed(http: aiohttp.ClientSession, ws_url: str) -> tuple[float | None, str]:
    """Connect and read the first bot turn: (seconds from connect to ``bot-llm-stopped``, or None if it
    failed; its text, or why it failed)."""
    started = time.perf_counter()
    try:
        async with http.ws_connect(ws_url) as ws:
            text = await read_bot_turn(ws)
            elapsed = time.perf_counter() - started
        return elapsed, text
    except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
        return None, str(e)


async def echo_floor(n: int, warmup: int = 5) -> list[float]:
    """``n`` sequential ``echo_once`` samples against a fresh echo server (after ``warmup`` unrecorded)."""
    async with start_echo_server() as ws_url, aiohttp.ClientSession() as http:
        for _ in range(warmup):
            await echo_once(http, ws_url)
        return [await echo_once(http, ws_url) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Redis (the cluster registry's shared state)
# --------------------------------------------------------------------------------------------------


def redis_server_path() -> str | None:
    """Debian's ``redis-server`` executable, or None when it is not installed."""
    return shutil.which("redis-server")


@asynccontextmanager
async def start_redis_server(timeout: float = 10.0) -> AsyncIterator[str]:
    """A ``redis-server`` of this run's own on a free loopback port, no persistence (``--save ""
    --appendonly no``), in a temp dir; yields its ``redis://`` URL and stops it on exit.

    Raises ``FileNotFoundError`` when ``redis-server`` is not installed (check ``redis_server_path()``).
    """
    import socket

    exe = redis_server_path()
    if exe is None:
        raise FileNotFoundError("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    workdir = Path(tempfile.mkdtemp(prefix="mgw-bredis-"))
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        cwd=str(workdir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not listen on port {port}") from None
                await asyncio.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
