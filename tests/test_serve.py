"""The README's quick start: ``memory-gateway serve`` on a fresh data dir, embedded PostgreSQL, no key."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.clients import rtvi_client
from tests.fake_llm import FakeLLM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_on_a_fresh_data_dir_starts_embedded_postgres_and_greets(
    tmp_root: Path, fake_llm: FakeLLM
) -> None:
    data_dir = tmp_root / "serve"
    port = _free_port()
    env = {**os.environ, "GATEWAY_LLM_BASE_URL": fake_llm.base_url, "GATEWAY_LOG_FORMAT": "json"}
    env.pop("GATEWAY_DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    key = None
    log: list[str] = []
    try:
        async with asyncio.timeout(90), aiohttp.ClientSession() as http:
            while key is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(log)
                log.append(line)
                if m := re.search(r"^\s+(mgw_\S+)\s*$", line):
                    key = m.group(1)
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
            # The embedded defaults on loopback are the first-run laptop set-up: demo mode is on.
            async with http.get(f"http://127.0.0.1:{port}/") as page:
                assert page.status == 200 and "Demo mode" in await page.text()
            resp = await http.post(
                f"http://127.0.0.1:{port}/start",
                json={"transport": "websocket", "body": {"user_id": "quickstart", "serializer": "rtvi"}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status == 200
            client = await rtvi_client(await http.ws_connect((await resp.json())["wsUrl"]))
            assert "nice to meet you" in (await client.bot_turn()).lower()
            assert await client.say("hi") == "I heard: hi"
            await client.ws.close()
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        assert (
            "sha256:" in (data_dir / "tenants.yaml").read_text()
            and key not in (data_dir / "tenants.yaml").read_text()
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 60)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0, "".join(log) + rest.decode()
