"""PostgreSQL advisory locks that make schema set-up safe for replicas sharing one database.

``CREATE … IF NOT EXISTS`` does not protect against a concurrent creator: two sessions both find
nothing committed, both insert the catalog row, and the later one fails with a unique violation
(``pg_extension_name_index``, ``pg_type_typname_nsp_index``, ``pg_class_relname_nsp_index``) — two
replicas started together on a fresh database crashed or lost a tenant that way. So each set-up step
runs in one transaction that first takes a transaction-level advisory lock (``pg_advisory_xact_lock``:
released at commit or rollback, so a crashed replica never leaves one behind). Whoever waits then
sees the winner's committed objects, and its own statements are no-ops.

The keys are arbitrary constants, spelled in ASCII so that they can be recognised in ``pg_locks``.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection, Cursor

#: Single ``bigint`` key (ASCII ``mgw_vect``) serialising ``CREATE EXTENSION vector`` per database.
#: In ``pg_locks``: ``locktype = 'advisory'``, ``classid = 1835497311``, ``objid = 1986356084``,
#: ``objsubid = 1``. Outside the ``int4`` range, so no single-key ``hashtext(…)`` lock can collide.
EXTENSION = 0x6D67_775F_7665_6374

#: First of two ``int4`` keys (ASCII ``mgwS``) serialising one table's creation and index upgrades;
#: the second key is ``hashtext(<table name>)``. In ``pg_locks``: ``classid = 1835497299``,
#: ``objid = hashtext(table)``, ``objsubid = 2``. Tables whose names hash alike merely wait for each
#: other.
TABLE_SCHEMA = 0x6D67_7753

#: Longest wait for one of these locks (``lock_timeout``, for the rest of the transaction): a holder
#: builds indexes on an existing table at ≈0.24 s per 100k rows per index, so a minute or two is a
#: wedged holder, not a slow one.
TIMEOUT = "120s"

_Executor = Connection[Any] | Cursor[Any]


def _bounded(on: _Executor) -> None:
    on.execute("SELECT set_config('lock_timeout', %s, true)", (TIMEOUT,))


def lock_extension(on: _Executor) -> None:
    """Hold the extension lock until the current transaction ends."""
    _bounded(on)
    on.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (EXTENSION,))


def lock_table(on: _Executor, table: str) -> None:
    """Hold ``table``'s schema lock until the current transaction ends."""
    _bounded(on)
    on.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (TABLE_SCHEMA, table))


#: First of two ``int4`` keys (ASCII ``mgwR``) of a table's retention purge, held for a whole round
#: at session level (``pg_try_advisory_lock``), so that one process purges a table at a time; the
#: second key is ``hashtext(<table name>)``. In ``pg_locks``: ``classid = 1835497298``,
#: ``objid = hashtext(table)``, ``objsubid = 2``.
PURGE = 0x6D67_7752


def try_lock_purge(conn: Connection[Any], table: str) -> bool:
    """Take ``table``'s purge lock for this session if no one holds it; True if taken."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s::integer, hashtext(%s))", (PURGE, table)).fetchone()
    return bool(row and row[0])


def unlock_purge(conn: Connection[Any], table: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s::integer, hashtext(%s))", (PURGE, table))
