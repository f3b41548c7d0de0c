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
