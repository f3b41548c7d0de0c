"""``memory-gateway`` command line: ``serve``, ``tenants …`` and ``memories …``.

``tenants`` edits the tenants file; a running gateway picks the change up within
``GATEWAY_TENANTS_RELOAD_SECS`` (or at once on SIGHUP). ``memories`` works on the same memory store
the gateway uses — with the embedded PostgreSQL it joins the running server, or starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.logging import configure_logging, get_logger
from gateway.settings import Settings


def _bootstrap_tenants(settings: Settings) -> None:
    """First run on a fresh data dir: create a ``default`` tenant and print its key once."""
    from gateway.tenants import TenantRegistry

    path = settings.resolved_tenants_file
    if path.exists():
        return
    registry = TenantRegistry([], path)
    _, key = registry.add("default")
    registry.save()
    print(
        f"\nCreated tenant 'default' in {path}.\n"
        f"Its API key (shown once, only a hash is stored):\n\n    {key}\n",
        file=sys.stderr,
        flush=True,
    )


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    given = {"data_dir": args.data_dir, "tenants_file": args.tenants_file, **extra}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # mem0 reads these when first imported: keep its files in our data dir, telemetry off.
    os.environ.setdefault("MEM0_DIR", str(settings.data_dir / "mem0"))
    os.environ.setdefault("MEM0_TELEMETRY", "false")
    return settings


class EarlySignals:
    """SIGTERM / SIGINT that arrive before the event loop handles them (imports, app start-up).

    Without this, a signal in those seconds kills the process with the default action (exit -15): a
    worker that ``serve --workers`` stops while it is still starting, or a pod deleted during start-up,
    would die instead of exiting cleanly. ``run_server`` takes them over and drains at once.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signal.Signals(signum).name)


def serve(args: argparse.Namespace) -> int:
    early = EarlySignals()  # the supervisor, if this becomes one, installs its own handlers
    settings = _settings(args, host=args.host, port=args.port, workers=args.workers)
    configure_logging(settings.log_format, settings.log_level)
    _bootstrap_tenants(settings)
    if settings.workers > 1 and settings.worker_index is None:
        return _supervise(settings, args, early)

    from gateway.app import create_app
    from gateway.pipeline.locallm import LocalLLMServer
    from gateway.runtime import tune_gc_on_startup
    from gateway.tenants import TenantFileError

    local_llm = None
    if settings.local_llm and not settings.llm_base_url:
        local_llm = LocalLLMServer(data_dir=settings.data_dir)
        settings = settings.model_copy(
            update={"llm_base_url": local_llm.start(), "llm_model": local_llm.model}
        )
    try:
        try:
            app = create_app(settings)
        except TenantFileError as e:
            print(f"error: bad tenants file: {e}", file=sys.stderr)
            return 2
        # After the app's own start-up (imports done, tenant backends built): gateway.runtime.
        app.on_startup.append(tune_gc_on_startup)
        return asyncio.run(run_server(app, settings, early))
    finally:
        if local_llm is not None:
            local_llm.stop()


def _supervise(settings: Settings, args: argparse.Namespace, early: EarlySignals) -> int:
    """``--workers N``: this process supervises N gateway processes (``gateway.workers``)."""
    from gateway.pipeline.locallm import LocalLLMServer
    from gateway.workers import Supervisor

    argv = [
        "serve",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--data-dir",
        str(settings.data_dir),
    ]
    if args.tenants_file is not None:
        argv += ["--tenants-file", str(args.tenants_file)]
    local_llm = None
    if settings.local_llm and not settings.llm_base_url:
        local_llm = LocalLLMServer(data_dir=settings.data_dir)  # one for all workers
        settings = settings.model_copy(
            update={"llm_base_url": local_llm.start(), "llm_model": local_llm.model}
        )
    try:
        return Supervisor(settings, settings.workers, argv).run(early.received)
    finally:
        if local_llm is not None:
            local_llm.stop()


async def run_server(app: Any, settings: Settings, early: EarlySignals | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then drain (uvicorn's order; LiveKit Agents' drain):

    1. first signal: readiness goes false, ``/start`` answers 503 and new sockets 1001, while the
       listeners stay open so that a load balancer still routing here gets a clear answer;
    2. live sessions get ``GATEWAY_DRAIN_SECS`` to end on their own; those still live then hear
       ``GATEWAY_DRAIN_MESSAGE`` (if set) and are closed with 1001;
    3. their last writes get ``GATEWAY_SHUTDOWN_GRACE_SECS``; leases are released, memory closed
       (writes that could not land stay in the outbox for the next start); exit 0.

    A second signal during the drain ends the wait at once (sessions closed with 1001 straight away,
    the rest of the shutdown as above, each step still bounded); exit 1.
    """
    from aiohttp import web

    from gateway.app import server_options
    from gateway.keys import registry_key

    log = get_logger("gateway.cli")
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[str] = asyncio.Queue(maxsize=8)

    def received(name: str) -> None:  # a handler only queues the signal (uvicorn's rule)
        if not signals.full():
            signals.put_nowait(name)

    # Before the app starts up: a signal during start-up is queued, and drains as soon as it is up.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig.name)
    for name in early.received if early is not None else ():
        received(name)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_secs,
        **server_options(settings),
    )
    await runner.setup()
    # aiohttp's default listen backlog (128) overflowed under a 500-connect burst on two workers: the
    # kernel dropped SYNs and each cost its client a 1 s retransmit. The kernel caps it at somaxconn.
    backlog = 2048
    if settings.worker_index is None:
        await web.TCPSite(runner, settings.host, settings.port, backlog=backlog).start()
    else:
        # The shared port (SO_REUSEPORT: the kernel spreads connections over the workers) and this
        # worker's own, which its /start puts into wsUrl (gateway.workers).
        from gateway.workers import worker_port

        await web.TCPSite(runner, settings.host, settings.port, reuse_port=True, backlog=backlog).start()
        port = worker_port(settings, settings.worker_index)
        await web.TCPSite(runner, settings.host, port, backlog=backlog).start()
    log.info("gateway.listening", host=settings.host, ports=[a[1] for a in runner.addresses])

    forced = False
    second: asyncio.Task[str] | None = None
    try:
        first = await signals.get()
        log.info("gateway.drain_started", signal=first, drain_secs=settings.drain_secs)
        registry = app[registry_key]
        drain = asyncio.create_task(
            registry.drain(
                settings.shutdown_grace_secs, wait=settings.drain_secs, closing_line=settings.drain_message
            )
        )
        second = asyncio.create_task(signals.get())
        await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        if second.done():
            forced = True
            log.warning("gateway.drain_forced", signal=second.result())
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
            await registry.drain(min(settings.shutdown_grace_secs, 2.0))
    finally:
        # The handlers stay until the end: a second signal during the (bounded) clean-up must not
        # kill the process with the default action (exit -15), only mark the stop as forced.
        await runner.cleanup()
        if second is not None:
            if second.done() and not forced:
                forced = True
                log.warning("gateway.drain_forced", signal=second.result())
            second.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            # The process is on its way out: a late signal must not turn exit 0/1 into death by it.
            signal.signal(sig, signal.SIG_IGN)
    log.info("gateway.stopped", forced=forced)
    return 1 if forced else 0


def _print_key(name: str, key: str, what: str) -> None:
    print(f"{what} for tenant {name!r} (shown once, only a hash is stored):\n\n    {key}\n", flush=True)


def tenants(args: argparse.Namespace) -> int:
    from gateway.tenants import TenantFileError, TenantRegistry

    path = _settings(args).resolved_tenants_file
    try:
        registry = TenantRegistry.load(path) if path.exists() else TenantRegistry([], path)
        if args.action == "list":
            rows = [
                {
                    "name": t.name,
                    "status": t.status,
                    "keys": len(t.api_keys),
                    "max_sessions": t.max_sessions,
                    "memory": t.memory.backend,
                    "origins": ",".join(t.allowed_origins) or "*",
                }
                for t in registry
            ]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print("  ".join(f"{k}={v}" for k, v in row.items()))
            return 0
        if not args.name:
            raise TenantFileError(f"tenants {args.action} needs a tenant NAME")
        if args.action == "add":
            fields: dict[str, Any] = {}
            if args.max_sessions is not None:
                fields["max_sessions"] = args.max_sessions
            if args.origin:
                fields["allowed_origins"] = args.origin
            _, key = registry.add(args.name, **fields)
            registry.save()
            _print_key(args.name, key, "API key")
        elif args.action in ("disable", "enable"):
            registry.update(args.name, status="disabled" if args.action == "disable" else "active")
            registry.save()
            print(f"tenant {args.name!r} {args.action}d")
        elif args.action == "rotate-key":
            key = registry.rotate_key(args.name, revoke_old=args.revoke_old)
            registry.save()
            _print_key(args.name, key, "New API key")
            kept = len(registry.require(args.name).api_keys) - 1
            print(
                "Every previous key is revoked."
                if not kept
                else "The previous key stays valid until the next rotation or `rotate-key --revoke-old`.",
            )
    except (TenantFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


async def _memories(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.tenants import TenantRegistry
    from memory.backends import MemoryBackends
    from memory.scope import MemoryScope

    tenant = TenantRegistry.load(settings.resolved_tenants_file).get(args.tenant)
    if tenant is None:
        print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
        return 2
    if args.action in ("list", "forget") and not args.user:
        print(f"error: {args.action} needs --user", file=sys.stderr)
        return 2
    if args.action == "import" and not args.input:
        print("error: import needs --input FILE (JSONL)", file=sys.stderr)
        return 2
    backends = MemoryBackends(data_dir=settings.data_dir, database_url=settings.database_url, max_workers=4)
    await backends.start()
    try:
        backend = await backends.for_tenant(tenant.name, tenant.memory)
        if args.action in ("export", "import"):
            return await _portability(backend, args)
        scope = MemoryScope(tenant.name, args.user, args.agent)
        if args.action == "forget":
            if not args.yes:
                print("error: forgetting is permanent; add --yes", file=sys.stderr)
                return 2
            deleted = await backend.forget(scope)
            print(f"forgot {deleted} memories of user {args.user!r} in tenant {tenant.name!r}")
            return 0
        found = await backend.recent(scope, args.limit)
        if args.json:
            print(json.dumps(found, indent=2, default=str))
        for m in [] if args.json else found:
            print(f"{m.get('created_at', '')}  {m.get('role') or '-':9}  {m.get('memory', '')}")
        return 0
    finally:
        await backends.close()


async def _portability(backend: Any, args: argparse.Namespace) -> int:
    """``memories export`` (JSONL to ``--output`` or stdout) and ``memories import --input``: the
    formats of ``memory.portability``. An import checks the whole file first and writes nothing if a
    line is invalid."""
    from datetime import UTC, datetime

    from memory import portability
    from memory.scope import MemoryScope

    if not backend.portable:
        print(f"error: {args.action} needs memory.backend pgvector", file=sys.stderr)
        return 2
    if args.action == "export":
        scope = MemoryScope(backend.tenant, args.user, args.agent) if args.user or args.agent else None
        if args.output is None:
            count = await portability.export_jsonl(backend, scope, sys.stdout)
        else:
            with args.output.open("w", encoding="utf-8") as out:
                count = await portability.export_jsonl(backend, scope, out)
        print(f"exported {count} memories of tenant {backend.tenant!r}", file=sys.stderr)
        return 0
    now = datetime.now(UTC)
    try:
        with args.input.open(encoding="utf-8") as lines:
            valid, errors = portability.check_jsonl(lines, now)
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    if errors or not valid:
        for error in errors or ["no memories in the file"]:
            print(f"error: {args.input}: {error}", file=sys.stderr)
        print("nothing imported", file=sys.stderr)
        return 2
    with args.input.open(encoding="utf-8") as lines:
        report = await portability.import_jsonl(backend, lines, now=now)
    print(
        f"imported {report.written} memories into tenant {backend.tenant!r} (already stored ones kept once;"
        f" {report.expired} past the tenant's retention skipped)",
        file=sys.stderr,
    )
    return 0


def memories(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_format, "WARNING")
    return asyncio.run(_memories(settings, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memory-gateway", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="default: GATEWAY_DATA_DIR or ~/.memory-gateway")
    common.add_argument("--tenants-file", type=Path, help="default: <data dir>/tenants.yaml")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--workers",
        type=int,
        help="gateway processes, one core each (default 1; each also listens on port + 1 + index)",
    )
    p.set_defaults(func=serve)

    t = sub.add_parser("tenants", parents=[common], help="manage tenants and their API keys")
    t.add_argument("action", choices=["add", "list", "disable", "enable", "rotate-key"])
    t.add_argument("name", nargs="?")
    t.add_argument("--max-sessions", type=int, help="add: concurrent-session limit")
    t.add_argument("--origin", action="append", help="add: allowed browser Origin (repeatable)")
    t.add_argument("--revoke-old", action="store_true", help="rotate-key: revoke every previous key now")
    t.add_argument("--json", action="store_true", help="list: JSON output")
    t.set_defaults(func=tenants)

    m = sub.add_parser(
        "memories", parents=[common], help="list or forget one user's memories; export or import (JSONL)"
    )
    m.add_argument("action", choices=["list", "forget", "export", "import"])
    m.add_argument("--tenant", required=True)
    m.add_argument("--user", help="list, forget: required; export: only this user's memories")
    m.add_argument("--agent", help="only memories with this agent")
    m.add_argument("--output", type=Path, help="export: write here (default: stdout)")
    m.add_argument("--input", type=Path, help="import: the JSONL file")
    m.add_argument("--limit", type=int, default=100)
    m.add_argument("--json", action="store_true")
    m.add_argument("--yes", action="store_true", help="forget: confirm")
    m.set_defaults(func=memories)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
