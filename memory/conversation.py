"""What one session stores of its conversation: each message once, durably, in order.

A session's storage outlives its Pipecat pipeline and may precede it: a text session greets before
its pipeline is built (``gateway.pipeline.session``), and a client may type and leave before it is.
So this is the session's own object; the pipeline's ``GatewayMemoryService`` stores through it.

Storage is incremental and durable: each store takes only the user/assistant messages of the context
not stored yet — each first appended to the process's outbox (awaited, so an accepted turn survives a
crash), keyed ``<session>.<nonce>:<n>`` so it lands exactly once — then goes through the tenant's
bounded write queue, with ``infer=False`` unless the tenant configured an extraction LLM. The greeting
and other lines the bot says without the LLM (``exclude``) are never stored: they only restate memories.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage

from memory.outbox import OutboxEntry
from memory.scope import MemoryScope
from memory.tenant import TenantMemory

STORED_ROLES = ("user", "assistant")


def storable(text: str) -> str:
    """Text as PostgreSQL can keep it and the embedder can place it: no NUL, not blank.

    A blank message has nothing to remember (and embeds to a zero vector, which has no cosine), and
    PostgreSQL text cannot hold NUL; either would fail the whole write batch on every retry.
    """
    return text.replace("\x00", "").strip()


class ConversationStore:
    """One session's writes: which of its context's messages are stored, under which keys."""

    def __init__(
        self,
        *,
        backend: TenantMemory,
        scope: MemoryScope,
        session_id: str | None = None,
        session_start: datetime | None = None,
    ) -> None:
        self.backend = backend
        self.scope = scope
        self._infer = backend.settings.infer
        self._stored = 0
        # Idempotency keys: the session, a nonce (a session id may get a second pipeline, e.g. a
        # client that asks for another serializer at connect), and a counter that never goes back,
        # even when the context is shortened.
        self._key_prefix = f"{session_id or uuid.uuid4().hex}.{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._session_start = (session_start or datetime.now(UTC)).isoformat()
        self._unstored: list[str] = []
        self._writes: set[asyncio.Future[bool]] = set()
        # A message of the context that is not the conversation (the recalled memories).
        self.hidden: Any = None

    @property
    def stored(self) -> int:
        """Messages this session has queued for storage so far."""
        return self._seq

    def exclude(self, assistant_text: str) -> None:
        """Don't store the next assistant message with this text (the greeting, a farewell)."""
        self._unstored.append(assistant_text)

    def conversation(self, context: LLMContext) -> list[dict[str, Any]]:
        messages: list[Any] = context.get_messages()
        return [
            m
            for m in messages
            if not isinstance(m, LLMSpecificMessage)
            and m is not self.hidden
            and m.get("role") in STORED_ROLES
            and isinstance(m.get("content"), str)
        ]

    async def store_new(self, context: LLMContext) -> None:
        """Make what the context gained since the last store durable, and queue it."""
        conversation = self.conversation(context)
        if self._stored > len(conversation):
            # The context was shortened (summarised or reset); everything in it now predates us.
            self._stored = len(conversation)
            return
        fresh = conversation[self._stored :]
        self._stored = len(conversation)
        entries = []
        ids = self.scope.storage_ids()
        for message in fresh:
            if message.get("role") == "assistant" and message.get("content") in self._unstored:
                self._unstored.remove(message["content"])
                continue
            content = storable(message["content"])
            if not content:
                continue
            entries.append(
                OutboxEntry(
                    key=f"{self._key_prefix}:{self._seq}",
                    tenant=self.backend.tenant,
                    ids=ids,
                    role=message["role"],
                    content=content,
                    infer=self._infer,
                    session_start=self._session_start,
                )
            )
            self._seq += 1
        if not entries:
            return
        for done in await self.backend.enqueue(entries):
            self._writes.add(done)
            done.add_done_callback(self._writes.discard)

    async def store_final(self, context: LLMContext, typed: Sequence[str] = ()) -> None:
        """Store what the last turn added (the bot's final reply) when the session ends.

        ``typed``: the user's latest typed texts as the transport received them, oldest first. Those
        after the last one the context holds never reached it — the client left while Pipecat was
        still handling them, or before the session had a pipeline — and are stored as user messages
        too: an accepted turn is not lost.
        """
        await self.store_new(context)
        users = [m["content"] for m in self.conversation(context) if m.get("role") == "user"]
        last = users[-1] if users else None
        cut = next((i + 1 for i in range(len(typed) - 1, -1, -1) if typed[i] == last), 0)
        missing: list[Any] = [{"role": "user", "content": storable(text)} for text in typed[cut:]]
        missing = [m for m in missing if m["content"]]
        if missing:
            context.add_messages(missing)  # as the user aggregator would have; keeps their order
            await self.store_new(context)

    async def flush(self, timeout: float) -> bool:
        """Wait until this session's queued writes are stored; True if all made it in time."""
        pending = [f for f in self._writes if not f.done()]
        if not pending:
            return True
        done, _ = await asyncio.wait(pending, timeout=timeout)
        return len(done) == len(pending) and all(f.result() for f in done)
