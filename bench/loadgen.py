"""Load generator for the gateway benchmarks, run in its own process (never on the gateway's event loop).

Two roles, each a small line-oriented JSON protocol over stdin/stdout so the bench can drive it:

``python -m bench.loadgen llm``
    A zero-delay fake OpenAI-compatible streaming LLM (``tests.fake_llm``: replies "I heard: <text>").
    Prints ``{"event": "listening", "port": N}``, serves until stdin closes.

``python -m bench.loadgen clients``
    Reads one JSON config line (``Config``), then commands, one per line:

    * ``{"cmd": "open", "sessions": N, "rate": R}`` — open N more RTVI sessions, R per second (0: all
      at once; default: the config's ``arrival_rate``): ``POST /start``, WebSocket, ``client-ready``,
      each timed connect → the greeting's ``bot-llm-stopped``; answers ``{"event": "opened", ...}``
      once every one of them is greeted or failed: ``start_secs`` (``POST /start``), ``greeting_secs``
      (connect → greeting), ``released_secs`` (the command's release of the sessions → greeting),
      ``ws_ports`` (greeted sessions by the port of their ``wsUrl``: the worker under ``--workers``)
      and ``errors`` (kind → count, so far).
    * ``{"cmd": "turns", "turns": K, "think_secs": T}`` — every held session sends K ``send-text`` turns,
      each after a random pause in [0, T), timing send → reply's ``bot-llm-stopped``; answers ``turned``.
    * ``{"cmd": "close"}`` — close every session; answers ``closed`` with all samples and errors.

    Progress lines (``{"event": "progress", "done": i, "total": n}``) come while a command runs.

``python -m bench.loadgen timer``
    One sequential timing client, for the latency scenarios: answers ``ready``, then for each command
    line times one sample with the harness's client functions and answers ``{"event": "timed", ...}``:
    ``{"cmd": "greet", "url", "key", "user_id", "client_ready"}`` (``POST /start`` → [``client-ready``]
    → greeting: ``total``, ``connect``, ``text``), ``{"cmd": "ws_greeting", "ws_url"}`` (connect → first
    bot turn: ``seconds``, ``text``),
    ``{"cmd": "echo", "ws_url"}`` and ``{"cmd": "post_echo", "base", "ws_url"}`` (``seconds``). A failed
    sample answers ``error``. ``{"cmd": "soak", "url", "key", "user_prefix", "first", "count"}`` runs
    ``count`` whole sessions one after another (``POST /start``, WebSocket, ``client-ready``, greeting,
    one ``send-text`` turn and its reply, close; users ``<user_prefix><first + i>``), with progress
    lines, and answers ``seconds`` (each session's), ``wall_secs`` and ``errors`` (kind → count).

Everything targets loopback only, and every wait has a deadline, so a stuck gateway ends a command with
counted errors rather than a hang.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LABEL = "rtvi-ai"
ALLOWED_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def raise_nofile_limit() -> int:
    """Lift the soft open-files limit to the hard one (each session holds a socket on both ends)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _rtvi(type_: str, data: Any) -> str:
    return json.dumps(
        {"label": LABEL, "type": type_, "id": f"{type_}-{random.getrandbits(32):x}", "data": data}
    )


def _send_text(text: str) -> str:
    # The message format of tests/clients.py: text turn, no audio reply.
    return _rtvi(
        "send-text", {"content": text, "options": {"run_immediately": True, "audio_response": False}}
    )


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


@dataclass
class Config:
    base_url: str
    api_key: str
    greeting_timeout: float = 30.0
    turn_timeout: float = 30.0
    # New sessions per second while opening; 0 opens them all at once.
    arrival_rate: float = 0.0
    # Users are "<prefix><index>": a fresh prefix per run gives users with no memories yet.
    user_prefix: str = "bench-"
    seed: int = 1


@dataclass
class ClientSession:
    """One client connection. Like a browser's WebSocket it reads all the time (``reader``), so the
    server's heartbeat pings are answered while the user is idle; turns read from ``inbox``."""

    index: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    greeted: bool = False
    inbox: asyncio.Queue[aiohttp.WSMessage] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    def attach(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.reader = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()  # answers pings (autoping) as it goes
            self.inbox.put_nowait(msg)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return


@dataclass
class LoadGenerator:
    config: Config
    http: aiohttp.ClientSession
    sessions: list[ClientSession] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # perf_counter() when the current ``open`` released its sessions; wsUrl ports of greeted sessions.
    released: float = 0.0
    ws_ports: Counter[int] = field(default_factory=Counter)

    async def _bot_turn(self, session: ClientSession, timeout: float) -> str:
        """Text of the next bot response, up to its ``bot-llm-stopped``."""
        parts: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await session.inbox.get()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    assert session.ws is not None
                    raise ConnectionError(f"socket {msg.type.name} (close code {session.ws.close_code})")
                event = json.loads(msg.data)
                kind = event.get("type")
                if kind == "bot-llm-text":
                    parts.append(event["data"]["text"])
                elif kind == "bot-llm-stopped":
                    return "".join(parts)
                elif kind == "error":
                    raise RuntimeError("rtvi error")

    async def _open_one(self, index: int) -> tuple[float, float, float] | None:
        """One session: (/start seconds, connect → greeting seconds, release → greeting seconds), or
        None after counting an error."""
        cfg = self.config
        session = ClientSession(index)
        try:
            t0 = time.perf_counter()
            async with self.http.post(
                f"{cfg.base_url}/start",
                json={
                    "transport": "websocket",
                    "body": {"user_id": f"{cfg.user_prefix}{index}", "serializer": "rtvi"},
                },
                headers={"Authorization": f"Bearer {cfg.api_key}"},
                timeout=aiohttp.ClientTimeout(total=cfg.greeting_timeout),
            ) as resp:
                if resp.status != 200:
                    self.errors[f"start_http_{resp.status}"] += 1
                    return None
                url = (await resp.json())["wsUrl"]
            t1 = time.perf_counter()
            ws = await self.http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
            session.attach(ws)
            self.sessions.append(session)
            await ws.send_str(_rtvi("client-ready", {"version": "2.0.0", "about": {"library": "bench"}}))
            await self._bot_turn(session, cfg.greeting_timeout)
            t2 = time.perf_counter()
            session.greeted = True
            port = urlsplit(url).port
            if port is not None:
                self.ws_ports[port] += 1
            return t1 - t0, t2 - t1, t2 - self.released
        except TimeoutError:
            self.errors["greeting_timeout"] += 1
        except (aiohttp.ClientError, ConnectionError, RuntimeError, OSError, ValueError) as e:
            self.errors[f"greeting_{type(e).__name__}"] += 1
        return None

    async def open(self, count: int, rate: float | None = None) -> dict[str, Any]:
        start = len(self.sessions)
        rate = self.config.arrival_rate if rate is None else rate
        tasks: list[asyncio.Task[tuple[float, float, float] | None]] = []
        self.ws_ports.clear()
        began = self.released = time.perf_counter()
        done = 0

        def _progress(_: object) -> None:
            nonlocal done
            done += 1
            if done == count or done % max(1, count // 20) == 0:
                _emit("progress", done=done, total=count)

        for i in range(count):
            if rate > 0:
                await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
            task = asyncio.create_task(self._open_one(start + i))
            task.add_done_callback(_progress)
            tasks.append(task)
        results = await asyncio.gather(*tasks)
        ok = [r for r in results if r is not None]
        return {
            "held": sum(1 for s in self.sessions if s.greeted),
            "opened": len(ok),
            "start_secs": [r[0] for r in ok],
            "greeting_secs": [r[1] for r in ok],
            "released_secs": [r[2] for r in ok],
            "ws_ports": {str(port): n for port, n in sorted(self.ws_ports.items())},
            "errors": dict(self.errors),
            "wall_secs": time.perf_counter() - began,
        }

    async def _turns_one(
        self, session: ClientSession, turns: int, think: float, rng: random.Random
    ) -> list[float]:
        samples: list[float] = []
        ws = session.ws
        assert ws is not None
        for k in range(turns):
            await asyncio.sleep(rng.uniform(0.0, think))
            text = f"turn {k} of session {session.index}"
            try:
                t0 = time.perf_counter()
                await ws.send_str(_send_text(text))
                reply = await self._bot_turn(session, self.config.turn_timeout)
                samples.append(time.perf_counter() - t0)
                if reply != f"I heard: {text}":
                    self.errors["turn_wrong_reply"] += 1
            except TimeoutError:
                self.errors["turn_timeout"] += 1
                return samples
            except (aiohttp.ClientError, ConnectionError, RuntimeError, OSError, ValueError) as e:
                self.errors[f"turn_{type(e).__name__}"] += 1
                return samples
        return samples

    async def turns(self, turns: int, think: float) -> dict[str, Any]:
        rng = random.Random(self.config.seed)
        live = [s for s in self.sessions if s.greeted and s.ws is not None and not s.ws.closed]
        began = time.perf_counter()
        results = await asyncio.gather(
            *(self._turns_one(s, turns, think, random.Random(rng.random())) for s in live)
        )
        samples = [x for r in results for x in r]
        return {"turn_secs": samples, "sessions": len(live), "wall_secs": time.perf_counter() - began}

    async def close(self) -> dict[str, Any]:
        unexpected = sum(1 for s in self.sessions if s.greeted and s.ws is not None and s.ws.closed)
        if unexpected:
            self.errors["closed_by_server"] += unexpected
        await asyncio.gather(
            *(s.ws.close() for s in self.sessions if s.ws is not None and not s.ws.closed),
            return_exceptions=True,
        )
        readers = [s.reader for s in self.sessions if s.reader is not None]
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self.sessions.clear()
        return {"errors": dict(self.errors)}


async def _read_line(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    return message


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run_clients() -> None:
    reader = await _stdin_reader()
    first = await _read_line(reader)
    if first is None:
        return
    config = Config(**first)
    host = config.base_url.split("://", 1)[-1].rsplit(":", 1)[0]
    if host not in ALLOWED_HOSTS:
        raise SystemExit(f"refusing to load a non-loopback host: {host}")
    limit = raise_nofile_limit()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        gen = LoadGenerator(config, http)
        _emit("ready", nofile=limit)
        while (command := await _read_line(reader)) is not None:
            cmd = command.get("cmd")
            if cmd == "open":
                rate = command.get("rate")
                _emit(
                    "opened",
                    **await gen.open(int(command["sessions"]), None if rate is None else float(rate)),
                )
            elif cmd == "turns":
                _emit("turned", **await gen.turns(int(command["turns"]), float(command["think_secs"])))
            elif cmd == "close":
                _emit("closed", **await gen.close())
                return
            else:
                raise SystemExit(f"unknown command {cmd!r}")
        await gen.close()


async def run_llm() -> None:
    # tests.fake_llm is the project's fake; it records each request, which is fine for a bounded run.
    from tests.fake_llm import FakeLLM

    raise_nofile_limit()
    llm = FakeLLM()
    await llm.start()
    assert llm.server is not None
    _emit("listening", port=llm.server.port)
    reader = await _stdin_reader()
    while await reader.readline():
        pass
    await llm.close()


def _loopback(url: str) -> str:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in ALLOWED_HOSTS:
        raise SystemExit(f"refusing to time a non-loopback host: {host}")
    return url


async def _soak(http: aiohttp.ClientSession, command: dict[str, Any]) -> dict[str, Any]:
    """``count`` sequential whole sessions: each ``/start``, connect, greeting, one turn, close."""
    from bench.harness import read_bot_turn, say_timed, start_session

    url, key = _loopback(command["url"]), command["key"]
    prefix, first, count = str(command["user_prefix"]), int(command["first"]), int(command["count"])
    errors: Counter[str] = Counter()
    seconds: list[float] = []
    every = max(1, count // 100)
    began = time.perf_counter()
    for i in range(count):
        user = f"{prefix}{first + i}"
        started = time.perf_counter()
        try:
            ws_url = await start_session(http, url, key, user)
            async with http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
                await ws.send_str(_rtvi("client-ready", {"version": "2.0.0", "about": {"library": "bench"}}))
                await read_bot_turn(ws, 30.0)
                text = f"soak turn of {user}"
                _, reply = await say_timed(ws, text, 30.0)
                if reply != f"I heard: {text}":
                    errors["turn_wrong_reply"] += 1
            seconds.append(time.perf_counter() - started)
        except TimeoutError:
            errors["timeout"] += 1
        except (aiohttp.ClientError, ConnectionError, RuntimeError, OSError, ValueError) as e:
            errors[type(e).__name__] += 1
        if (i + 1) % every == 0 or i + 1 == count:
            _emit("progress", done=i + 1, total=count)
    return {"seconds": seconds, "wall_secs": time.perf_counter() - began, "errors": dict(errors)}


async def _time(http: aiohttp.ClientSession, command: dict[str, Any]) -> dict[str, Any]:
    from bench.harness import echo_once, greet_timed, post_then_echo, ws_greeting_timed

    cmd = command["cmd"]
    if cmd == "soak":
        return await _soak(http, command)
    if cmd == "greet":
        timing = await greet_timed(
            http,
            _loopback(command["url"]),
            command["key"],
            command["user_id"],
            client_ready=bool(command.get("client_ready", True)),
        )
        return {"total": timing.total, "connect": timing.connect, "text": timing.text}
    if cmd == "ws_greeting":
        seconds, text = await ws_greeting_timed(http, _loopback(command["ws_url"]))
        return {"seconds": seconds, "text": text}
    if cmd == "echo":
        return {"seconds": await echo_once(http, _loopback(command["ws_url"]))}
    if cmd == "post_echo":
        base, ws_url = _loopback(command["base"]), _loopback(command["ws_url"])
        return {"seconds": await post_then_echo(http, base, ws_url)}
    raise SystemExit(f"unknown command {cmd!r}")


async def run_timer() -> None:
    reader = await _stdin_reader()
    async with aiohttp.ClientSession() as http:
        _emit("ready")
        while (command := await _read_line(reader)) is not None:
            try:
                result = await _time(http, command)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
                result = {"error": f"{type(e).__name__}: {e}"}
            _emit("timed", **result)


def main(argv: list[str]) -> None:
    role = argv[1] if len(argv) > 1 else ""
    if role == "clients":
        asyncio.run(run_clients())
    elif role == "llm":
        asyncio.run(run_llm())
    elif role == "timer":
        asyncio.run(run_timer())
    else:
        raise SystemExit("usage: python -m bench.loadgen clients|llm|timer")


if __name__ == "__main__":
    main(sys.argv)
