"""A gateway in a process of its own, for measurements that must not see the bench's own heap (RSS).

``python -m bench.gatewayproc`` reads one JSON config line (``tenant``, ``database_url``, ``llm_base_url``
and ``Settings`` overrides under ``settings``), starts the harness's gateway tuned as
``memory-gateway serve`` tunes it (``gateway.runtime.tune_gc``), prints
``{"event": "listening", "url": …, "key": …, "tenant": …, "pid": …}`` and then answers commands, one
JSON line each:

* ``{"cmd": "sessions", "live": N, "timeout": T}`` — wait until the gateway counts N live sessions;
  answers ``{"event": "sessions", "live": counted, "ok": bool}``.
* ``{"cmd": "rss", "settle": S}`` — ``gc.collect()``, wait S seconds, collect again; answers
  ``{"event": "rss", "rss_mib": VmRSS, "gc_objects": tracked objects}``.

It stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MEM0_TELEMETRY", "false")


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _serve() -> None:
    from bench.harness import BenchContext
    from bench.loadgen import raise_nofile_limit
    from bench.loadrun import load_gateway, rss_mib
    from gateway.keys import registry_key
    from gateway.logging import configure_logging

    configure_logging("json", "WARNING", stream=sys.stderr)
    logging.getLogger("mem0.utils.spacy_models").setLevel(logging.ERROR)  # as bench.runner does
    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    ctx = BenchContext(
        smoke=False, out_dir=Path("."), progress=lambda *_: None, database_url=config["database_url"]
    )
    async with load_gateway(
        ctx, config["tenant"], config["llm_base_url"], **config.get("settings", {})
    ) as gw:
        _emit("listening", url=gw.base_url, key=gw.api_key, tenant=gw.tenant, pid=os.getpid())
        registry = gw.app[registry_key]
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "sessions":
                deadline = time.monotonic() + float(command["timeout"])
                while registry.held() != command["live"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                live = registry.held()
                _emit("sessions", live=live, ok=live == command["live"])
            elif command["cmd"] == "rss":
                gc.collect()
                await asyncio.sleep(float(command["settle"]))
                gc.collect()
                _emit("rss", rss_mib=rss_mib(), gc_objects=len(gc.get_objects()))
            else:
                raise SystemExit(f"unknown command {command['cmd']!r}")


if __name__ == "__main__":
    asyncio.run(_serve())
