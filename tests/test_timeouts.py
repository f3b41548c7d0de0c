"""Timeouts: a client that goes quiet, stops reading or never finishes its request is cut off, alone.

Everything here runs over real sockets against the real gateway. Clients that misbehave below the
WebSocket layer (never reading, never finishing the HTTP request) are raw TCP sockets driven by hand,
since aiohttp's own client is too well-behaved to play them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from yarl import URL

from gateway import closecodes
from tests.clients import WireClient, rtvi_client, send_text
from tests.conftest import GatewayFactory, RunningGateway

CLOSE_OPCODE = 0x8


async def _eventually(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` (metrics have no events); how long it took to hold."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None
    return time.monotonic() - started


def _rejections(gateway: RunningGateway, reason: str) -> float:
    return gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason=reason)


def _ended(gateway: RunningGateway, outcome: str) -> float:
    return gateway.sample("gateway_sessions_total", tenant=gateway.tenant, outcome=outcome)


async def _raw_connection(
    port: int, *, small_buffers: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the gateway on loopback.

    ``small_buffers`` makes a client whose unread data backs up quickly: a small receive buffer, and a
    small MSS, which keeps the gateway's kernel send buffer from auto-tuning up to megabytes (both set
    before connecting, so they apply from the first segment). The stream's small limit makes asyncio
    stop pulling from the kernel after a few KB that nobody reads.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=4096)


async def _raw_upgrade(ws_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``ws_url`` by hand on a small-buffered socket and read just the ``101`` response head."""
    url = URL(ws_url)
    assert url.port is not None
    reader, writer = await _raw_connection(url.port, small_buffers=True)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {url.raw_path_qs} HTTP/1.1\r\n"
            f"Host: {url.host}:{url.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def _client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2-5.3)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    keystream = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
    return header + mask + masked


async def _drain_to_end(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until the connection ends; the close frame's code, or None if none came
    (a reset, which discards what was in flight, is an end too)."""
    buffer = b""
    code: int | None = None
    try:
        while chunk := await reader.read(1 << 16):
            buffer += chunk
            while len(buffer) >= 2:
                opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
                if length == 126:
                    length, offset = int.from_bytes(buffer[2:4], "big"), 4
                elif length == 127:
                    length, offset = int.from_bytes(buffer[2:10], "big"), 10
                if len(buffer) < offset + length:
                    break
                if opcode == CLOSE_OPCODE and code is None:
                    code = int.from_bytes(buffer[offset : offset + 2], "big")
                buffer = buffer[offset + length :]
    except ConnectionResetError:
        pass
    return code


@dataclass
class Talker:
    """A well-behaved session that says something every ``pause`` seconds and checks every answer."""

    client: WireClient
    pause: float
    turns: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._talk())

    async def _talk(self) -> None:
        while not self._stop.is_set():
            text = f"still here, message {self.turns}"
            assert await self.client.say(text, timeout=5) == f"I heard: {text}"
            self.turns += 1
            await asyncio.sleep(self.pause)

    async def answers(self, more: int, timeout: float) -> None:
        """Wait for ``more`` further answers (and fail at once if the conversation broke)."""
        target = self.turns + more
        await _eventually(
            lambda: self.turns >= target or (self._task is not None and self._task.done()),
            timeout,
            f"{more} more answers to the well-behaved client",
        )
        assert self._task is not None
        if self._task.done():
            self._task.result()  # raises what broke it
            raise AssertionError("the well-behaved client stopped talking")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _server_holds_connection(gateway: RunningGateway, writer: asyncio.StreamWriter) -> bool:
    """Whether the gateway still has an open connection from this raw client's address."""
    runner = gateway.server.runner
    assert runner is not None and runner.server is not None
    ours = writer.get_extra_info("sockname")
    return any(
        handler.transport is not None and handler.transport.get_extra_info("peername") == ours
        for handler in runner.server.connections
    )


async def test_idle_client_is_closed_with_4008_and_others_are_unaffected(
    make_gateway: GatewayFactory,
) -> None:
    """A client that connects and then says nothing must not hold a session forever; keep-alive pings
    are not saying anything, and a client that does talk is never idled out."""
    idle_timeout = 2.0  # small, yet well above a loaded machine's answer time (the talker's longest gap)
    gateway = await make_gateway(idle_timeout_secs=idle_timeout)
    client = await gateway.connect(user_id="talker")
    await client.bot_turn()
    talker = Talker(client, pause=0.1)
    talker.start()
    try:
        resp = await gateway.start(user_id="quiet", serializer="rtvi")
        assert resp.status == 200
        # This client pings every 0.2 s: alive, but saying nothing.
        ws = await gateway.http.ws_connect((await resp.json())["wsUrl"], heartbeat=0.2)
        quiet = await rtvi_client(ws)
        gateway.clients.append(quiet)
        connected = time.monotonic()
        await quiet.bot_turn()

        assert await quiet.closed(timeout=idle_timeout + 5) == closecodes.IDLE_TIMEOUT
        assert time.monotonic() - connected >= idle_timeout * 0.9
        await _eventually(
            lambda: _ended(gateway, "idle_timeout") == 1,
            5,
            "idle session counted as ended by idle_timeout",
        )
        # The talker, at it since before the quiet client came, has outlived an idle period and goes on.
        await talker.answers(2, timeout=5)
        await talker.stop()
    finally:
        talker.cancel()
    assert not client.ws.closed
    assert _rejections(gateway, "idle_timeout") == 1
    await client.ws.close()
    await gateway.settle()
    assert _ended(gateway, "idle_timeout") == 1
    assert _ended(gateway, "completed") == 1


async def test_slow_client_that_never_reads_is_closed_and_others_are_unaffected(
    make_gateway: GatewayFactory,
) -> None:
    """A client that stops reading must not hold a pipeline, a socket or its buffers hostage: once one
    send waits longer than ``send_timeout_secs`` the gateway closes it with 1008 and lets it go, without
    needing the client's cooperation, while other sessions carry on."""
    gateway = await make_gateway(send_timeout_secs=0.5, heartbeat_secs=60)
    client = await gateway.connect(user_id="talker")
    await client.bot_turn()
    talker = Talker(client, pause=0.1)
    talker.start()

    resp = await gateway.start(user_id="sloth", serializer="rtvi")
    assert resp.status == 200
    reader, writer = await _raw_upgrade((await resp.json())["wsUrl"])
    try:
        # Each message comes back at least twice over (user-input, user-llm-text, the bot's echo), and
        # this client reads none of it.
        for n in range(20):
            if _rejections(gateway, "slow_client"):
                break
            try:
                writer.write(_client_frame(json.dumps(send_text(f"{n} " + "x" * 150_000)).encode()))
                await writer.drain()
            except ConnectionError:  # already cut off
                break
            await asyncio.sleep(0.25)
        await _eventually(lambda: _rejections(gateway, "slow_client") >= 1, 5, "slow client rejected")
        await talker.answers(2, timeout=3)

        # The gateway lets the slow client go on its own: the client still reads nothing.
        await _eventually(
            lambda: _ended(gateway, "client_error") == 1,
            5,
            "slow client's session ended (outcome client_error) while the client still reads nothing",
        )
        await _eventually(
            lambda: not _server_holds_connection(gateway, writer),
            3,
            "gateway released the slow client's TCP connection while the client still reads nothing",
        )
        await talker.answers(2, timeout=3)

        # Reading at last, the client finds the end of the stream; a close frame, if one got out, says why.
        code = await asyncio.wait_for(_drain_to_end(reader), 5)
        assert code in (closecodes.POLICY_VIOLATION, None)
        await talker.stop()
    finally:
        writer.close()
        talker.cancel()
    assert _rejections(gateway, "slow_client") == 1
    assert await client.say("all good?") == "I heard: all good?"
    await client.ws.close()
    await gateway.settle()
    assert _ended(gateway, "client_error") == 1
    assert _ended(gateway, "completed") == 1


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent before closing the connection (it must close within ``timeout``)."""
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                received += chunk
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout} s") from None
    except ConnectionResetError:
        pass
    return received


async def test_connection_that_never_completes_its_request_is_closed_by_the_handshake_timeout(
    make_gateway: GatewayFactory,
) -> None:
    """Half-open and slowloris connections must not pile up: a connection gets ``handshake_timeout_secs``
    from accept to deliver a whole request, however slowly it dribbles; finished requests and the
    WebSocket sessions they open are not affected."""
    handshake_timeout = 0.5
    gateway = await make_gateway(handshake_timeout_secs=handshake_timeout)
    port = gateway.server.port
    runner = gateway.server.runner
    assert port is not None and runner is not None and runner.server is not None
    assert runner.server().keepalive_timeout == handshake_timeout, (
        "the server under test must run with gateway.app.server_options(settings)"
    )

    silent_reader, silent = await _raw_connection(port)
    slow_reader, slow = await _raw_connection(port)
    opened = time.monotonic()

    async def dribble() -> None:
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for n in range(100):
            await asyncio.sleep(0.1)
            if slow_reader.at_eof():
                return
            slow.write(f"X-Slow-{n}: y\r\n".encode())  # never the blank line that ends the head

    dribbling = asyncio.create_task(dribble())
    try:
        # A real client meanwhile gets through, and its session outlives the handshake timeout.
        client = await gateway.connect(user_id="prompt")
        await client.bot_turn()

        assert await _closed_by_server(silent_reader, handshake_timeout + 3) == b""
        assert await _closed_by_server(slow_reader, handshake_timeout + 3) == b""
        assert time.monotonic() - opened >= handshake_timeout * 0.9

        await asyncio.sleep(max(0.0, opened + 2 * handshake_timeout - time.monotonic()))
        assert await client.say("hello there") == "I heard: hello there"
    finally:
        dribbling.cancel()
        silent.close()
        slow.close()
    await client.ws.close()
    await gateway.settle()
    assert _ended(gateway, "completed") == 1
