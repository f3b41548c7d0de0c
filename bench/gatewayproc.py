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
* ``{"cmd": "sample", "settle": S, "timeout": T}`` — wait (up to T) until no session is live and no
  memory write is queued, then as ``rss``; answers ``{"event": "sample", "settled": bool, "rss_mib",
  "fds": entries of /proc/self/fd, "tasks": len(asyncio.all_tasks()), "task_names": {name: count},
  "threads", "gc_objects", "sessions": live}`` (the soak's leak probes).

* ``{"cmd": "trace", "frames": F}`` — start ``tracemalloc`` (F frames per allocation) and take the
  reference snapshot; answers ``{"event": "trace"}``.
* ``{"cmd": "trace_diff", "top": N, "settle": S, "timeout": T}`` — once settled (as ``sample``),
  compare a new snapshot with the reference, grouped by traceback; answers ``{"event":
  "trace_diff", "kib": total growth, "top": [{"kib", "count", "where": [frames, innermost last]}]}``:
  where a growth that ``gc_objects`` does not show (strings, bytes in a cache) lives.

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
        reference: Any = None  # the tracemalloc snapshot of ``trace``
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
            elif command["cmd"] == "sample":
                settled = await _settled(gw.app, float(command["timeout"]))
                gc.collect()
                await asyncio.sleep(float(command["settle"]))
                gc.collect()
                _emit("sample", settled=settled, **_probe(registry))
            elif command["cmd"] == "trace":
                import tracemalloc

                tracemalloc.start(int(command.get("frames", 8)))
                gc.collect()
                reference = tracemalloc.take_snapshot()
                _emit("trace")
            elif command["cmd"] == "trace_diff":
                import tracemalloc

                await _settled(gw.app, float(command.get("timeout", 60)))
                gc.collect()
                await asyncio.sleep(float(command.get("settle", 1.0)))
                gc.collect()
                stats = tracemalloc.take_snapshot().compare_to(reference, "traceback")
                _emit(
                    "trace_diff",
                    kib=round(sum(st.size_diff for st in stats) / 1024, 1),
                    top=[
                        {
                            "kib": round(st.size_diff / 1024, 1),
                            "count": st.count_diff,
                            "where": [f"{f.filename}:{f.lineno}" for f in st.traceback],
                        }
                        for st in stats[: int(command.get("top", 15))]
                    ],
                )
            else:
                raise SystemExit(f"unknown command {command['cmd']!r}")


async def _settled(app: Any, timeout: float) -> bool:
    """Wait until no session is live or held and every queued memory write has landed."""
    from gateway.keys import backends_key, registry_key

    registry, backends = app[registry_key], app[backends_key]
    deadline = time.monotonic() + timeout
    while len(registry.sessions) or registry.held() or backends.pending_writes():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _probe(registry: Any) -> dict[str, Any]:
    """What a leak would grow: RSS, open fds, the loop's tasks (by name), threads, GC objects."""
    import collections
    import threading

    from bench.loadrun import rss_mib

    tasks = asyncio.all_tasks()
    names = collections.Counter(_task_name(task) for task in tasks)
    return {
        "rss_mib": rss_mib(),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(tasks),
        "task_names": dict(names.most_common()),
        "threads": threading.active_count(),
        "gc_objects": len(gc.get_objects()),
        "sessions": len(registry.sessions),
    }


def _task_name(task: asyncio.Task[Any]) -> str:
    """A task's name, or its coroutine's qualified name for the default ``Task-<n>`` names."""
    name = task.get_name()
    if name.startswith("Task-"):
        coro = task.get_coro()
        return getattr(coro, "__qualname__", type(coro).__name__)
    return name


if __name__ == "__main__":
    asyncio.run(_serve())
