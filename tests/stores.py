"""Where a user's words can be kept, searched the way an auditor would: every store and every file.

An erasure test asks all of them, not only the API: the tenant's memory table, mem0's history and
message log (PostgreSQL, ``memory.mem0compat``), the erasure tombstones, and the bytes of every file
under each replica's data dir (the outbox and its WAL, anything mem0 may have written locally).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from memory.local import table_name
from memory.mem0compat import history_tables


def _tables(conn: psycopg.Connection, names: tuple[str, ...]) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE tablename = ANY(%s)", (list(names),))
    return sorted(str(r[0]) for r in rows.fetchall())


def where_in_database(database_url: str, tenant: str, text: str) -> list[str]:
    """``table`` names of the tenant whose rows (any column, as text) contain ``text``."""
    collection = table_name(tenant)
    found = []
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        for table in _tables(conn, (collection, *history_tables(collection), "gateway_erasures")):
            query = sql.SQL("SELECT count(*) FROM {} t WHERE strpos(t::text, %s) > 0").format(
                sql.Identifier(table)
            )
            row = conn.execute(query, (text,)).fetchone()
            if row and row[0]:
                found.append(table)
    return found


def where_on_disk(root: Path, text: str) -> list[str]:
    """Files under ``root`` whose bytes contain ``text`` (UTF-8), as paths relative to ``root``."""
    needle = text.encode()
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found
