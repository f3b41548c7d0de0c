"""Shared plumbing of the load scenarios (``concurrency``, ``rss``): the gateway under test in this
process (the harness's ``start_gateway``), the fake LLM and the client load generator (``bench.loadgen``)
each in a child process of their own; and the latency scenarios' (``greeting``, ``floor``) sequential
timing client, also in a process of its own (``TimingClient``).

The gateway owns this process's event loop; the clients never share it, so their CPU and scheduling do
not show up as gateway latency, and this process's CPU time and RSS are the gateway's (plus the idle
bench around it: a constant, which slopes and rates subtract out).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("MEM0_TELEMETRY", "false")

from aiohttp import web

from bench.harness import BenchContext, BenchGateway, GreetingTiming, start_gateway
from bench.loadgen import raise_nofile_limit

ROOT = Path(__file__).resolve().parent.parent


def ms(seconds: float) -> float | None:
    """Seconds as milliseconds for a table cell; None (JSON null) for nothing measured."""
    return None if math.isnan(seconds) else round(seconds * 1000, 2)


def rss_mib(pid: int | None = None) -> float:
    """Resident set size (VmRSS) of a process, in MiB, from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def cpu_seconds() -> float:
    """CPU time of this process (every thread: event loop and the memory worker pool)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcPauses:
    """Time this process spends in the cyclic garbage collector (all of it on the event loop)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self.collections = 0
        self.full_collections = 0
        self.full_seconds = 0.0
        self._started = 0.0

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total += pause
        self.longest = max(self.longest, pause)
        self.collections += 1
        if info.get("generation") == 2:
            self.full_collections += 1
            self.full_seconds += pause

    @contextlib.contextmanager
    def watching(self) -> Iterator[GcPauses]:
        gc.callbacks.append(self._hook)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._hook)


async def settled_rss(settle_secs: float = 1.0) -> float:
    """This process's RSS after a full collection and a short quiet period."""
    gc.collect()
    await asyncio.sleep(settle_secs)
    gc.collect()
    return rss_mib()


class Child:
    """A ``bench.loadgen`` child process spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, role: str) -> None:
        self.proc = proc
        self.role = role

    @classmethod
    async def spawn(cls, role: str, module: str = "bench.loadgen") -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            role,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            limit=64 * 1024 * 1024,  # result lines carry every sample
        )
        return cls(proc, role)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(
        self, event: str, timeout: float, on_progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"loadgen {self.role} exited (code {await self.proc.wait()})")
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == "progress":
                    if on_progress is not None:
                        on_progress(int(message["done"]), int(message["total"]))
                    continue
                if message.get("event") != event:
                    raise RuntimeError(f"loadgen {self.role}: expected {event}, got {message.get('event')}")
                return message

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class LoadGateway:
    """The gateway under load: the harness's ``BenchGateway`` plus what the load generator needs."""

    bench: BenchGateway

    @property
    def app(self) -> web.Application:
        return self.bench.app

    @property
    def base_url(self) -> str:
        return self.bench.url

    @property
    def api_key(self) -> str:
        return self.bench.key

    @property
    def tenant(self) -> str:
        return self.bench.tenant


@contextlib.asynccontextmanager
async def fake_llm() -> AsyncIterator[str]:
    """The zero-delay fake LLM in a child process; yields its base URL."""
    child = await Child.spawn("llm")
    try:
        listening = await child.expect("listening", timeout=60)
        yield f"http://127.0.0.1:{listening['port']}/v1"
    finally:
        await child.stop()


@contextlib.asynccontextmanager
async def load_gateway(
    ctx: BenchContext,
    tenant: str,
    llm_base_url: str | None,
    *,
    tune_gc: bool = True,
    **settings: Any,
) -> AsyncIterator[LoadGateway]:
    """The harness's in-process gateway (``start_gateway``), set up as ``memory-gateway serve`` runs it.

    ``gateway.runtime.tune_gc`` runs once the app has started, as ``serve`` does (``tune_gc=False``
    measures without it). The tenant (a name of this scenario's own: the run's PostgreSQL is shared)
    talks to ``llm_base_url`` through the process-default LLM settings; its session limit and
    ``/start`` rate are lifted far above the load by the harness. ``settings`` override
    ``gateway.settings.Settings`` fields.
    """
    raise_nofile_limit()
    if llm_base_url is not None:
        settings = {"llm_base_url": llm_base_url, "llm_model": "fake-model", **settings}
    async with start_gateway(
        tenants=(tenant,), database_url=ctx.database_url, runtime_tuning=tune_gc, **settings
    ) as gw:
        yield LoadGateway(gw)


class GatewayProcess:
    """A gateway in a child process of its own (``bench.gatewayproc``): its heap is nobody else's."""

    def __init__(self, child: Child, listening: dict[str, Any]) -> None:
        self._child = child
        self.base_url: str = listening["url"]
        self.api_key: str = listening["key"]
        self.tenant: str = listening["tenant"]
        self.pid: int = listening["pid"]

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, ctx: BenchContext, tenant: str, llm_base_url: str | None, **settings: Any
    ) -> AsyncIterator[GatewayProcess]:
        child = await Child.spawn("gateway", module="bench.gatewayproc")
        try:
            await child.send(
                {
                    "tenant": tenant,
                    "database_url": ctx.database_url,
                    "llm_base_url": llm_base_url,
                    "settings": settings,
                }
            )
            yield cls(child, await child.expect("listening", timeout=180))
        finally:
            await child.stop(timeout=60)

    async def wait_sessions(self, live: int, timeout: float) -> bool:
        await self._child.send({"cmd": "sessions", "live": live, "timeout": timeout})
        return bool((await self._child.expect("sessions", timeout + 10))["ok"])

    async def rss(self, settle: float) -> tuple[float, int]:
        """(VmRSS in MiB, GC-tracked objects) after a full collection and ``settle`` seconds."""
        await self._child.send({"cmd": "rss", "settle": settle})
        answer = await self._child.expect("rss", settle + 60)
        return float(answer["rss_mib"]), int(answer["gc_objects"])

    async def sample(self, settle: float, timeout: float = 60.0) -> dict[str, Any]:
        """Once no session is live and no memory write is queued (``settled``: whether that happened
        within ``timeout``), after a full collection and ``settle`` seconds: ``rss_mib``, ``fds``
        (entries of ``/proc/<pid>/fd``), ``tasks`` (``len(asyncio.all_tasks())`` on the gateway's
        loop), ``task_names`` (name → count), ``threads``, ``gc_objects``, ``sessions`` (live)."""
        await self._child.send({"cmd": "sample", "settle": settle, "timeout": timeout})
        return await self._child.expect("sample", settle + timeout + 60)

    async def trace(self, frames: int = 8) -> None:
        """Start ``tracemalloc`` in the gateway and take the reference snapshot (``trace_diff``)."""
        await self._child.send({"cmd": "trace", "frames": frames})
        await self._child.expect("trace", 60)

    async def trace_diff(self, top: int = 15, timeout: float = 60.0) -> dict[str, Any]:
        """Once settled: what was allocated since ``trace`` and is still held, by traceback."""
        await self._child.send({"cmd": "trace_diff", "top": top, "timeout": timeout})
        return await self._child.expect("trace_diff", timeout + 120)


class Target(Protocol):
    """Where clients connect: a gateway in this process or in a child."""

    @property
    def base_url(self) -> str: ...

    @property
    def api_key(self) -> str: ...


class Clients:
    """The client load generator child, driven command by command."""

    def __init__(self, child: Child) -> None:
        self._child = child

    @property
    def pid(self) -> int:
        """The generator's process ID (its CPU time is in ``/proc/<pid>``)."""
        return int(self._child.proc.pid)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, gateway: Target, **config: Any) -> AsyncIterator[Clients]:
        child = await Child.spawn("clients")
        try:
            await child.send({"base_url": gateway.base_url, "api_key": gateway.api_key, **config})
            await child.expect("ready", timeout=60)
            yield cls(child)
        finally:
            await child.stop()

    async def open(
        self,
        sessions: int,
        timeout: float,
        progress: Callable[[int, int], None] | None = None,
        rate: float | None = None,
    ) -> dict[str, Any]:
        """Open ``sessions`` more, ``rate`` per second (0: at once; None: the generator's default)."""
        await self._child.send({"cmd": "open", "sessions": sessions, "rate": rate})
        return await self._child.expect("opened", timeout, progress)

    async def turns(self, turns: int, think_secs: float, timeout: float) -> dict[str, Any]:
        await self._child.send({"cmd": "turns", "turns": turns, "think_secs": think_secs})
        return await self._child.expect("turned", timeout)

    async def close(self, timeout: float = 60.0) -> dict[str, Any]:
        await self._child.send({"cmd": "close"})
        return await self._child.expect("closed", timeout)


async def wait_sessions(app: web.Application, live: int, timeout: float) -> bool:
    """Wait until the gateway counts exactly ``live`` sessions; False on timeout."""
    from gateway.keys import registry_key

    registry = app[registry_key]
    deadline = time.monotonic() + timeout
    while registry.held() != live:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class TimingClient:
    """``bench.loadgen timer``: one sample at a time, timed in the client's own process.

    A client sharing the gateway's event loop would be queued behind the gateway's own work (the
    pipeline a ``/start`` starts, a session's teardown) and charge it to the sample; a real client has
    a machine of its own. The command's round trip over the pipe is outside every span.
    """

    def __init__(self, child: Child) -> None:
        self._child = child

    async def _timed(self, timeout: float = 60.0, **command: Any) -> dict[str, Any]:
        await self._child.send(command)
        return await self._child.expect("timed", timeout)

    async def greet(self, url: str, key: str, user_id: str, *, client_ready: bool = True) -> GreetingTiming:
        """``greet_timed``: ``POST /start`` → WebSocket → [``client-ready``] → greeting; raises if the
        sample failed."""
        result = await self._timed(cmd="greet", url=url, key=key, user_id=user_id, client_ready=client_ready)
        if "error" in result:
            raise RuntimeError(result["error"])
        return GreetingTiming(total=result["total"], connect=result["connect"], text=result["text"])

    async def ws_greeting(self, ws_url: str) -> tuple[float | None, str]:
        """``ws_greeting_timed``: (seconds or None if it failed, text or the failure)."""
        result = await self._timed(cmd="ws_greeting", ws_url=ws_url)
        if "error" in result:
            return None, str(result["error"])
        return result["seconds"], str(result["text"])

    async def echo(self, ws_url: str) -> float:
        result = await self._timed(cmd="echo", ws_url=ws_url)
        if "error" in result:
            raise RuntimeError(result["error"])
        return float(result["seconds"])

    async def post_echo(self, base: str, ws_url: str) -> float:
        result = await self._timed(cmd="post_echo", base=base, ws_url=ws_url)
        if "error" in result:
            raise RuntimeError(result["error"])
        return float(result["seconds"])

    async def soak(
        self,
        url: str,
        key: str,
        *,
        user_prefix: str,
        first: int,
        count: int,
        timeout: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """``count`` whole sessions one after another (``bench.loadgen``'s ``soak`` command): answers
        ``seconds`` (per session), ``wall_secs`` and ``errors``; raises if the command itself failed."""
        command = {"cmd": "soak", "url": url, "key": key, "user_prefix": user_prefix}
        await self._child.send({**command, "first": first, "count": count})
        result = await self._child.expect("timed", timeout, progress)
        if "error" in result:
            raise RuntimeError(result["error"])
        return result


@contextlib.asynccontextmanager
async def timing_client() -> AsyncIterator[TimingClient]:
    child = await Child.spawn("timer")
    try:
        await child.expect("ready", 60.0)
        yield TimingClient(child)
    finally:
        await child.stop()
