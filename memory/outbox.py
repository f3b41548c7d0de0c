"""The write outbox: every accepted turn is on local disk before the conversation moves on.

The in-memory ``WriteQueue`` retries through a backend blip, but a process that dies (``kill -9``, OOM,
a crashed host process) while PostgreSQL is unreachable took every queued sentence with it. Here each
message is first appended to a SQLite file in the data dir (``<data_dir>/outbox.db``, one per process /
data dir), and deleted once its row has landed; at start-up every remaining row is replayed. Each row
carries an idempotency key that travels into the stored memory's payload, where a unique index makes
a replay of an already-landed row a no-op (``memory.pgvector``) — so a crash between "row written"
and "outbox row deleted" lands nothing twice.

Durability: WAL mode with ``synchronous=NORMAL``. A commit is in the WAL (the OS page cache) when
``append`` returns, so it survives the *process* dying at any point; it is not fsynced on every
commit, so a power loss or kernel crash can lose the last commits before a checkpoint. That is the
trade: ``FULL`` would fsync each turn (milliseconds on real disks, per turn, per session).

Privacy: ``secure_delete=ON`` zeroes a deleted row's bytes in the page instead of leaving them in
free space, and an erasure (``purge``), like every delete that leaves the outbox empty, ends with
``wal_checkpoint(TRUNCATE)`` so the WAL file does not keep the text either. ``journal_size_limit``
keeps the WAL from staying large after a burst.

Bound: ``max_bytes`` caps the sum of what the rows hold (content plus IDs, UTF-8 bytes), tracked
exactly as rows come and go. The file itself is larger by SQLite's page overhead (at most ≈2x for
short rows) plus the WAL (truncated to ``journal_size_limit`` after each checkpoint). A full outbox
refuses the row (``append`` returns False); the caller still queues the write in memory and counts
the refusal (``memory.outbox_full``) — see ``TenantMemory.enqueue`` for why that, not back-pressure.

Every SQLite call runs on one dedicated thread (SQLite connections are not to be shared across
threads, and a single writer never waits on a lock); never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import time
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
WAL_LIMIT_BYTES = 4 * 1024 * 1024
SCOPE_COLUMNS = ("user_id", "agent_id", "run_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key           TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    user_id       TEXT,
    agent_id      TEXT,
    run_id        TEXT,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    infer         INTEGER NOT NULL,
    session_start TEXT NOT NULL,
    created_at    REAL NOT NULL,
    size          INTEGER NOT NULL,
    metadata      TEXT
)
"""
# Added after the first release: a file written by an earlier version gets the column at open.
_METADATA_COLUMN = "ALTER TABLE outbox ADD COLUMN metadata TEXT"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message to store: where (tenant and tenant-prefixed IDs), what, and since when it counts.

    ``session_start`` (ISO 8601, UTC) is the start of the session that said it: an erasure later than
    that wins over the write, wherever it lands (``memory.pgvector``).

    ``metadata`` (imports, ``memory.portability``) replaces the payload a session's message gets: the
    imported memory's own, with its ``created_at``. An imported *fact* has ``role`` ``""``.
    """

    key: str
    tenant: str
    ids: dict[str, str]
    role: str
    content: str
    infer: bool
    session_start: str
    created_at: float = 0.0
    metadata: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        extra = len(json.dumps(self.metadata).encode()) if self.metadata is not None else 0
        return (
            len(self.content.encode())
            + len(self.key)
            + sum(len(v.encode()) for v in self.ids.values())
            + extra
        )

    def matches(self, scope: dict[str, str]) -> bool:
        """True when this message is stored under every ID of an erasure's scope."""
        return all(self.ids.get(k) == v for k, v in scope.items())


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Outbox:
    """The process's outbox file; every method is a coroutine run on the outbox's own thread."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        self._bytes = 0
        self._replay_upto = 0

    @property
    def bytes(self) -> int:
        """What the rows hold now (the quantity ``max_bytes`` bounds)."""
        return self._bytes

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("outbox not open")
        return self._conn

    async def open(self) -> None:
        def do() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            conn.execute(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
            if "metadata" not in columns:
                conn.execute(_METADATA_COLUMN)
            row = conn.execute(
                "SELECT coalesce(sum(size), 0), coalesce(max(rowid), 0) FROM outbox"
            ).fetchone()
            self._bytes, self._replay_upto = int(row[0]), int(row[1])
            self._conn = conn

        await self._run(do)

    async def append(self, entry: OutboxEntry) -> bool:
        """Persist one message; False (nothing written) when that would exceed ``max_bytes``."""
        return (await self.append_many([entry]))[0]

    async def append_many(self, entries: list[OutboxEntry], *, ceiling: int | None = None) -> list[bool]:
        """Persist messages in one transaction (one commit per turn); per message, False if refused
        because it would take the outbox over ``max_bytes``.

        With ``ceiling`` (an import's batch, ``memory.portability``) it is all or nothing: every
        message if they all fit under ``ceiling`` bytes, else none — so that a bulk import can
        never fill the outbox that live sessions' turns rely on.
        """

        def do() -> list[bool]:
            db = self._db()
            accepted: list[bool] = []
            added = 0
            if ceiling is not None and self._bytes + sum(e.size for e in entries) > ceiling:
                return [False] * len(entries)
            db.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    size = entry.size
                    if self._bytes + added + size > self.max_bytes:
                        accepted.append(False)
                        continue
                    ids = [entry.ids.get(k) for k in SCOPE_COLUMNS]
                    cur = db.execute(
                        "INSERT OR IGNORE INTO outbox (key, tenant, user_id, agent_id, run_id, role, content,"
                        " infer, session_start, created_at, size, metadata)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            entry.key,
                            entry.tenant,
                            *ids,
                            entry.role,
                            entry.content,
                            int(entry.infer),
                            entry.session_start,
                            entry.created_at or time(),
                            size,
                            json.dumps(entry.metadata) if entry.metadata is not None else None,
                        ),
                    )
                    added += size if cur.rowcount else 0  # an existing key is already kept
                    accepted.append(True)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._bytes += added
            return accepted

        return await self._run(do)

    async def delete(self, key: str) -> bool:
        """Drop a landed (or refused-for-good) message; True if it was still there."""

        def do() -> bool:
            row = self._db().execute("DELETE FROM outbox WHERE key = ? RETURNING size", (key,)).fetchone()
            if row is None:
                return False
            self._bytes -= int(row[0])
            if self._bytes == 0:
                # Empty again: rewrite the WAL away, so frames of landed rows (and of a row an erasure
                # overtook) do not keep their text on disk until SQLite happens to reuse them.
                self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return True

        return await self._run(do)

    async def pending(self) -> int:
        """Rows not landed yet, of every tenant."""
        row = await self._run(lambda: self._db().execute("SELECT count(*) FROM outbox").fetchone())
        return int(row[0])

    async def replay(self, tenant: str) -> list[OutboxEntry]:
        """The tenant's rows left by an earlier process (those present when the file was opened)."""

        def do() -> list[OutboxEntry]:
            rows = self._db().execute(
                "SELECT key, tenant, user_id, agent_id, run_id, role, content, infer, session_start,"
                " created_at, metadata FROM outbox WHERE tenant = ? AND rowid <= ? ORDER BY rowid",
                (tenant, self._replay_upto),
            )
            return [_entry(r) for r in rows.fetchall()]

        return await self._run(do)

    async def oldest(self) -> float | None:
        """``created_at`` of the oldest row (for catching up on erasures missed while down)."""
        row = await self._run(lambda: self._db().execute("SELECT min(created_at) FROM outbox").fetchone())
        return float(row[0]) if row and row[0] is not None else None

    async def purge(self, tenant: str, scope: dict[str, str]) -> int:
        """Erase every row of ``tenant`` stored under all of ``scope``'s IDs; then truncate the WAL."""
        keys = [k for k in scope if k in SCOPE_COLUMNS]
        if not keys:
            return 0

        def do() -> int:
            where = " AND ".join(f"{k} = ?" for k in keys)
            db = self._db()
            rows = db.execute(
                f"DELETE FROM outbox WHERE tenant = ? AND {where} RETURNING size",
                (tenant, *(scope[k] for k in keys)),
            ).fetchall()
            self._bytes -= sum(int(r[0]) for r in rows)
            # Old WAL frames still hold the rows' text until the WAL is rewritten; TRUNCATE empties it.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return len(rows)

        return await self._run(do)

    async def close(self) -> None:
        def do() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

        try:
            await self._run(do)
        finally:
            self._executor.shutdown(wait=True)


def _entry(r: Any) -> OutboxEntry:
    ids = {k: v for k, v in zip(SCOPE_COLUMNS, (r[2], r[3], r[4]), strict=True) if v}
    return OutboxEntry(
        key=r[0],
        tenant=r[1],
        ids=ids,
        role=r[5],
        content=r[6],
        infer=bool(r[7]),
        session_start=r[8],
        created_at=float(r[9]),
        metadata=json.loads(r[10]) if r[10] is not None else None,
    )
