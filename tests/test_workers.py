"""``memory-gateway serve --workers 2`` on the embedded default: one PostgreSQL, two serving workers,
prestarted sessions claimed where they were started, everything stopped by one SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import psutil

from tests.clients import rtvi_client
from tests.fake_llm import FakeLLM
from tests.procs import free_port_run


def _postmasters(pgdata: Path) -> list[psutil.Process]:
    """Running PostgreSQL servers (not their backends) whose data directory is ``pgdata``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "ppid"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if "postgres" not in (proc.info["name"] or "") or str(pgdata) not in " ".join(cmdline):
                continue
            parent = psutil.Process(proc.info["ppid"])
            if "postgres" in parent.name():
                continue  # a backend or auxiliary process of that server
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def _metric(http: aiohttp.ClientSession, port: int, name: str, **labels: str) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


async def test_two_workers_share_one_postgres_claim_their_own_prestarted_sessions_and_stop_together(
    tmp_root: Path, fake_llm: FakeLLM
) -> None:
    data_dir = tmp_root / "workers"
    port = free_port_run(3)  # the shared port and the two workers' own
    env = {**os.environ, "GATEWAY_LLM_BASE_URL": fake_llm.base_url, "GATEWAY_LOG_FORMAT": "json"}
    env.pop("GATEWAY_DATABASE_URL", None)
    log_path = tmp_root / "workers.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        async with asyncio.timeout(120), aiohttp.ClientSession() as http:
            key = None
            while key is None:
                await asyncio.sleep(0.2)
                assert proc.returncode is None, log_path.read_text()
                if m := re.search(r"^\s+(mgw_\S+)\s*$", log_path.read_text(), re.MULTILINE):
                    key = m.group(1)
            for worker_port in (port + 1, port + 2):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{worker_port}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)
            assert len(_postmasters(data_dir / "postgres")) == 1

            # New connections to the shared port: the kernel spreads them over both workers, and each
            # wsUrl names the port of the worker that started the session.
            ports: list[int] = []
            clients = []
            for i in range(16):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as once:
                    resp = await once.post(
                        f"http://127.0.0.1:{port}/start",
                        json={"transport": "websocket", "body": {"user_id": f"u{i}", "serializer": "rtvi"}},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    assert resp.status == 200, await resp.text()
                    url = (await resp.json())["wsUrl"]
                ports.append(int(re.match(r"ws://[^:]+:(\d+)/", url).group(1)))  # type: ignore[union-attr]
                client = await rtvi_client(await http.ws_connect(url), "rtvi")
                assert "nice to meet you" in (await client.bot_turn()).lower()
                clients.append(client)
            assert set(ports) == {port + 1, port + 2}, ports
            claimed = [
                await _metric(http, p, "gateway_prestart_total", outcome="claimed")
                for p in (port + 1, port + 2)
            ]
            missed = [
                await _metric(http, p, "gateway_prestart_total", outcome="missed")
                for p in (port + 1, port + 2)
            ]
            assert sum(claimed) == 16 and sum(missed) == 0, (claimed, missed)
            assert claimed == [ports.count(port + 1), ports.count(port + 2)]
            print(f"prestart hit rate 16/16; sessions per worker {claimed}")
            for client in clients:
                await client.ws.close()

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 60) == 0, log_path.read_text()[-4000:]
        assert _postmasters(data_dir / "postgres") == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
