"""``memory-gateway`` command line: ``serve`` (and, as tenancy grows, tenant management)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


def serve(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "tenants_file": args.tenants_file,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # mem0 reads these when first imported: keep its files in our data dir, telemetry off.
    os.environ.setdefault("MEM0_DIR", str(settings.data_dir / "mem0"))
    os.environ.setdefault("MEM0_TELEMETRY", "false")
    _bootstrap_tenants(settings)

    from aiohttp import web

    from gateway.app import create_app
    from gateway.locallm import LocalLLMServer

    log = get_logger("gateway.cli")
    local_llm = None
    if settings.local_llm and not settings.llm_base_url:
        local_llm = LocalLLMServer(data_dir=settings.data_dir)
        settings = settings.model_copy(
            update={"llm_base_url": local_llm.start(), "llm_model": local_llm.model}
        )
    try:
        app = create_app(settings)
        log.info("gateway.listening", host=settings.host, port=settings.port)
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=None,
            shutdown_timeout=settings.shutdown_grace_secs,
            access_log=None,
        )
    finally:
        if local_llm is not None:
            local_llm.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memory-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--tenants-file", type=Path)
    p.set_defaults(func=serve)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
