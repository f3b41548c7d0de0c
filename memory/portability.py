"""Import and export formats: one memory as one JSON object (a JSONL line, or an item of a bulk POST).

**Export** (``memory-gateway memories export``) writes each visible memory of a tenant (or of one
user) as one line, oldest first::

    {"id": "…", "text": "my dog is called Biscuit", "role": "user", "user_id": "ada",
     "agent_id": "support-bot", "run_id": "…", "created_at": "2026-…+00:00",
     "updated_at": "2026-…+00:00", "metadata": {"platform": "pipecat", "source": "memory-gateway"}}

IDs are the client's (without the tenant prefix), ``role`` is ``user`` / ``assistant`` for a turn
stored as said and ``null`` for a fact, ``expiration_date`` appears when the memory has one.

**Import** (``memory-gateway memories import``, ``POST /v1/memories``) takes the same objects, and
also mem0's own: an item of mem0's ``get_all`` / ``search`` results (open-source or the Mem0
platform) carries its text as ``memory`` instead of ``text``. Per item:

* ``text`` (or ``memory``): required, 1-16,384 bytes of UTF-8 after NULs and surrounding blanks go;
* at least one of ``user_id`` / ``agent_id`` / ``run_id``, each as ``/start`` takes it (1-128 of
  ``A-Za-z0-9._:@+=-``): an ID of another tenant's form (``acme/ada``) is refused, so an import can
  only ever write into the importing tenant;
* ``role``: ``user``, ``assistant``, or absent / ``null`` for a fact;
* ``created_at``: ISO 8601 (a time without offset is UTC), not in the future; default: now. Stored
  in UTC. ``updated_at`` is not imported (a stored memory's starts at its ``created_at``);
* ``expiration_date``: ``YYYY-MM-DD``, optional (mem0's: never recalled after it);
* ``metadata``: an object of at most 4,096 bytes as JSON, whose keys are not the store's own
  (``RESERVED``);
* any other field (mem0's ``id``, ``hash``, ``score``, ``categories``, …) is ignored.

An import is **idempotent**: each memory's idempotency key is a hash of its IDs, role, text and
``created_at`` (``import:<32 hex>``), and the store inserts a key once (``memory.pgvector``), so
running the same file twice stores each memory once. Memories are stored as given (``infer=False``),
never sent through an extraction LLM.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO

from memory import pgvector
from memory.conversation import storable
from memory.outbox import OutboxEntry
from memory.retention import Retention
from memory.scope import ID_KEYS, ID_PATTERN, MemoryScope
from memory.tenant import TenantMemory

MAX_TEXT_BYTES = 16 * 1024
MAX_METADATA_BYTES = 4 * 1024
#: A line longer than this cannot hold a valid item (text + metadata + IDs + timestamps, escaped).
MAX_LINE_BYTES = 128 * 1024
#: What an imported memory's ``created_at`` may be ahead of this clock (another host's drift).
FUTURE_SLACK = timedelta(minutes=5)
ROLES = ("user", "assistant")
FACT = ""  # an imported fact's ``OutboxEntry.role``

#: Payload keys the store and mem0 own; an imported ``metadata`` may not set them.
RESERVED = frozenset(
    {
        "data", "hash", "text_lemmatized", "id", "created_at", "updated_at", "user_id", "agent_id",
        "run_id", "actor_id", "role", "attributed_to", "expiration_date", "session_started_at",
        pgvector.IDEMPOTENCY_KEY, pgvector.FAN_OUT,
    }
)  # fmt: skip
#: Payload keys the gateway writes for itself and an export leaves out.
INTERNAL = frozenset({pgvector.IDEMPOTENCY_KEY, pgvector.FAN_OUT, "session_started_at"})


class InvalidMemory(ValueError):
    """An item that cannot be imported; the message says which field and why (never its text)."""


@dataclass(frozen=True)
class ImportedMemory:
    """One validated item, ready to store."""

    text: str
    role: str  # "user", "assistant", or FACT
    ids: dict[str, str]  # the client's IDs (no tenant prefix)
    created_at: str  # ISO 8601, UTC
    metadata: dict[str, Any] = field(default_factory=dict)
    expiration_date: str | None = None

    @property
    def key(self) -> str:
        """The idempotency key: the same memory imported twice is stored once."""
        canonical = json.dumps([self.ids, self.role, self.text, self.created_at], sort_keys=True)
        return "import:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def entry(self, tenant: str, session_start: str) -> OutboxEntry:
        """The write, under the tenant's prefixed IDs (``memory.scope``); ``session_start``: when the
        import began (an erasure after it wins over the write, as over a session's)."""
        metadata: dict[str, Any] = {"source": "import", **self.metadata, "created_at": self.created_at}
        if self.expiration_date is not None:
            metadata["expiration_date"] = self.expiration_date
        return OutboxEntry(
            key=self.key,
            tenant=tenant,
            ids=MemoryScope(tenant, **self.ids).storage_ids(),
            role=self.role,
            content=self.text,
            infer=False,
            session_start=session_start,
            metadata=metadata,
        )


def parse_item(item: Any, now: datetime | None = None) -> ImportedMemory:
    """Validate one item of an import (``InvalidMemory`` says what is wrong)."""
    if not isinstance(item, dict):
        raise InvalidMemory("each memory must be a JSON object")
    raw = item.get("text", item.get("memory"))
    if not isinstance(raw, str):
        raise InvalidMemory("text (or memory) must be a string")
    text = storable(raw)
    if not text:
        raise InvalidMemory("text is empty")
    if not _unicode(text):
        raise InvalidMemory("text is not valid Unicode (a lone surrogate)")
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise InvalidMemory(f"text is longer than {MAX_TEXT_BYTES} bytes")
    ids: dict[str, str] = {}
    for key in ID_KEYS:
        value = item.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise InvalidMemory(f"{key} must be 1-128 characters of letters, digits and ._:@+=-")
        ids[key] = value
    if not ids:
        raise InvalidMemory("at least one of user_id, agent_id or run_id is required")
    role = item.get("role")
    if role is None:
        role = FACT
    elif role not in ROLES:
        raise InvalidMemory("role must be user, assistant or null (a fact)")
    now = now or datetime.now(UTC)
    return ImportedMemory(
        text=text,
        role=role,
        ids=ids,
        created_at=_created_at(item.get("created_at"), now),
        metadata=_metadata(item.get("metadata")),
        expiration_date=_expiration(item.get("expiration_date")),
    )


def _created_at(value: Any, now: datetime) -> str:
    if value is None:
        return now.isoformat()
    if not isinstance(value, str):
        raise InvalidMemory("created_at must be an ISO 8601 string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMemory("created_at must be an ISO 8601 time") from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when > now + FUTURE_SLACK:
        raise InvalidMemory("created_at is in the future")
    return when.isoformat()


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidMemory("metadata must be an object")
    reserved = sorted(RESERVED & value.keys())
    if reserved:
        raise InvalidMemory(f"metadata may not set {', '.join(reserved)}")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidMemory("metadata must be plain JSON (no NaN or Infinity)") from None
    if not _unicode(json.dumps(value, ensure_ascii=False)):
        raise InvalidMemory("metadata is not valid Unicode (a lone surrogate)")
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidMemory(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    if "\\u0000" in encoded:
        raise InvalidMemory("metadata may not contain NUL characters")
    return dict(value)


def _unicode(text: str) -> bool:
    """False for text UTF-8 cannot encode: JSON may escape a lone surrogate (``\\ud800``), which neither
    the outbox (SQLite) nor PostgreSQL's ``jsonb`` can store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _expiration(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidMemory("expiration_date must be a YYYY-MM-DD string")
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise InvalidMemory("expiration_date must be a YYYY-MM-DD date") from None


def export_item(memory: dict[str, Any], tenant: str) -> dict[str, Any]:
    """One stored memory of ``tenant`` (as ``memory.local.as_memory`` shapes a row) as an export
    line's object: the client's IDs, no internal keys."""
    prefix = f"{tenant}/"

    def client_id(value: Any) -> Any:
        return value[len(prefix) :] if isinstance(value, str) and value.startswith(prefix) else value

    metadata = {k: v for k, v in (memory.get("metadata") or {}).items() if k not in INTERNAL}
    out: dict[str, Any] = {
        "id": memory.get("id"),
        "text": memory.get("memory"),
        "role": memory.get("role"),
        **{key: client_id(memory.get(key)) for key in ID_KEYS},
        "created_at": memory.get("created_at"),
        "updated_at": memory.get("updated_at"),
        "metadata": metadata,
    }
    if memory.get("expiration_date"):
        out["expiration_date"] = memory["expiration_date"]
    return out


# ---- the command line's side: JSONL files (``memory-gateway memories export|import``)


async def export_jsonl(backend: TenantMemory, scope: MemoryScope | None, out: TextIO) -> int:
    """Write every visible memory of the scope (None: the whole tenant) to ``out``, one JSON object a
    line, oldest first; return how many."""
    count = 0
    async for page in backend.export_pages(scope):
        out.writelines(json.dumps(export_item(m, backend.tenant), ensure_ascii=False) + "\n" for m in page)
        count += len(page)
    out.flush()
    return count


@dataclass
class ImportReport:
    """What an import did: memories written (or found already stored: the same key is stored once),
    and those skipped because their tenant's retention has expired them already."""

    written: int = 0
    expired: int = 0


def check_jsonl(lines: Iterable[str], now: datetime, max_errors: int = 20) -> tuple[int, list[str]]:
    """Validate a whole file before anything is written: (valid items, the first ``max_errors``
    problems as ``line N: why``). Blank lines are skipped."""
    valid, errors = 0, []
    for number, line in enumerate(lines, 1):
        try:
            if _item(line, now) is not None:
                valid += 1
        except InvalidMemory as e:
            errors.append(f"line {number}: {e}")
            if len(errors) >= max_errors:
                break
    return valid, errors


def _item(line: str, now: datetime) -> ImportedMemory | None:
    if not line.strip():
        return None
    if len(line.encode()) > MAX_LINE_BYTES:
        raise InvalidMemory(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):
        raise InvalidMemory("not a JSON object") from None
    return parse_item(item, now)


async def import_jsonl(
    backend: TenantMemory, lines: Iterable[str], *, now: datetime, batch: int = 64, concurrency: int = 4
) -> ImportReport:
    """Store a file's memories (already checked by ``check_jsonl``) into the backend's tenant.

    Each batch is written and awaited before the next line is read: memory use is bounded by
    ``batch``, however large the file. The file is the durable record here — nothing is acknowledged
    before it landed, and the keys make running the same file again store each memory once.
    """
    report = ImportReport()
    retention = Retention.of(backend.settings.retention)
    started = now.isoformat()
    pending: dict[str, ImportedMemory] = {}  # by key: a line repeated in a batch is written once
    limit = asyncio.Semaphore(concurrency)

    async def write(memory: ImportedMemory) -> None:
        async with limit:
            await backend.add_entry(memory.entry(backend.tenant, started))

    async def flush() -> None:
        await asyncio.gather(*(write(m) for m in pending.values()))
        report.written += len(pending)
        pending.clear()

    for line in lines:
        memory = _item(line, now)
        if memory is None:
            continue
        if not retention.keeps(memory.role, memory.created_at, now):
            report.expired += 1
            continue
        pending[memory.key] = memory
        if len(pending) >= batch:
            await flush()
    await flush()
    return report
