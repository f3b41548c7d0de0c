"""Our ``Mem0MemoryService``: Pipecat's processor, with the traps in PITFALLS.md taken out.

It *is* a ``Mem0MemoryService`` (same ``InputParams``, same ``get_memories()``, same place in the
pipeline, same context-enhancement format), but:

* the mem0 client is injected — the tenant's shared backend — instead of built in ``__init__``;
* storage is incremental and durable: each turn stores only the user/assistant messages not stored
  yet — each first appended to the process's outbox (awaited before the frame goes on to the LLM, so
  an accepted turn survives a crash), keyed ``<session>.<nonce>:<n>`` so it lands exactly once —
  then through the tenant's bounded write queue, with ``infer=False`` unless the tenant configured
  an extraction LLM (Pipecat re-sends the whole context with ``infer=True`` every turn);
* retrieval uses the scope rules in ``memory.scope`` (a new ``run_id`` does not hide old memories),
  is bounded by a deadline, and a miss is counted by the backend instead of silently becoming ``[]``;
* the recalled-memories message replaces the previous one instead of piling up one per turn, and is
  never itself stored as a memory; nor is the greeting (it only restates memories).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipecat.frames.frames import Frame, LLMContextFrame
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.mem0.memory import Mem0MemoryService

from memory.backends import TenantMemory
from memory.outbox import OutboxEntry
from memory.scope import MemoryScope

log = logging.getLogger(__name__)


def storable(text: str) -> str:
    """Text as PostgreSQL can keep it and the embedder can place it: no NUL, not blank.

    A blank message has nothing to remember (and embeds to a zero vector, which has no cosine), and
    PostgreSQL text cannot hold NUL; either would fail the whole write batch on every retry.
    """
    return text.replace("\x00", "").strip()


STORED_ROLES = ("user", "assistant")


class GatewayMemoryService(Mem0MemoryService):
    def __init__(
        self,
        *,
        backend: TenantMemory,
        scope: MemoryScope,
        params: Mem0MemoryService.InputParams | None = None,
        search_timeout: float = 0.5,
        session_id: str | None = None,
        session_start: datetime | None = None,
        **kwargs: Any,
    ) -> None:
        # Deliberately skip Mem0MemoryService.__init__: it builds a mem0 client per instance.
        FrameProcessor.__init__(self, **kwargs)
        params = params or Mem0MemoryService.InputParams()
        self.memory_client = backend.client
        self.user_id = scope.user_id
        self.agent_id = scope.agent_id
        self.run_id = scope.run_id
        self.search_limit = params.search_limit
        self.search_threshold = params.search_threshold
        self.system_prompt = params.system_prompt
        self.add_as_system_message = params.add_as_system_message
        self.position = params.position
        self.last_query = None

        self._backend = backend
        self._scope = scope
        self._search_timeout = search_timeout
        self._infer = backend.settings.infer
        self._stored = 0
        # Idempotency keys: the session, a nonce (a session id may get a second pipeline, e.g. a
        # client that asks for another serializer at connect), and a counter that never goes back,
        # even when the context is shortened.
        self._key_prefix = f"{session_id or uuid.uuid4().hex}.{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._session_start = (session_start or datetime.now(UTC)).isoformat()
        self._memory_message: dict[str, Any] | None = None
        self._unstored: list[str] = []
        self._writes: set[asyncio.Future[bool]] = set()

    def exclude_from_storage(self, assistant_text: str) -> None:
        """Don't store the next assistant message with this text (e.g. the greeting)."""
        self._unstored.append(assistant_text)

    async def get_memories(
        self, limit: int | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The scope's newest memories — bounded (default ``search_limit``) and ordered, not mem0's 20.

        Unlike Pipecat's, errors propagate: the caller decides on a fallback and the failure is counted.
        """
        return await self._backend.recall(self._scope, limit or self.search_limit, timeout)

    async def _retrieve_memories(self, query: str) -> list[dict[str, Any]]:
        try:
            return await self._backend.search(
                self._scope,
                query,
                limit=self.search_limit,
                threshold=self.search_threshold,
                timeout=self._search_timeout,
            )
        except Exception as e:
            # Counted by the backend (gateway_memory_errors_total); the turn goes on without memories.
            log.warning("memory search failed or missed its deadline: %s", type(e).__name__)
            return []

    async def _enhance_context_with_memories(self, context: LLMContext, query: str) -> None:
        if self.last_query == query:
            return
        self.last_query = query  # type: ignore[assignment]  # Pipecat annotates it as None
        memories = await self._retrieve_memories(query)
        messages: list[Any] = list(context.get_messages())
        if self._memory_message is not None:
            messages = [m for m in messages if m is not self._memory_message]
            self._memory_message = None
        if memories:
            text = self.system_prompt + "".join(
                f"{i}. {m.get('memory', '')}\n\n" for i, m in enumerate(memories, 1)
            )
            role = "developer" if self.add_as_system_message else "user"
            self._memory_message = {"role": role, "content": text}
            messages.insert(max(0, min(self.position, len(messages))), self._memory_message)
        context.set_messages(messages)

    def _conversation(self, context: LLMContext) -> list[dict[str, Any]]:
        messages: list[Any] = context.get_messages()
        return [
            m
            for m in messages
            if not isinstance(m, LLMSpecificMessage)
            and m is not self._memory_message
            and m.get("role") in STORED_ROLES
            and isinstance(m.get("content"), str)
        ]

    async def _store_new_messages(self, context: LLMContext) -> None:
        conversation = self._conversation(context)
        if self._stored > len(conversation):
            # The context was shortened (summarised or reset); everything in it now predates us.
            self._stored = len(conversation)
            return
        fresh = conversation[self._stored :]
        self._stored = len(conversation)
        batch = []
        for message in fresh:
            if message.get("role") == "assistant" and message.get("content") in self._unstored:
                self._unstored.remove(message["content"])
                continue
            content = storable(message["content"])
            if content:
                batch.append({"role": message["role"], "content": content})
        if not batch:
            return
        entries = []
        ids = self._scope.storage_ids()
        for message in batch:
            entries.append(
                OutboxEntry(
                    key=f"{self._key_prefix}:{self._seq}",
                    tenant=self._backend.tenant,
                    ids=ids,
                    role=message["role"],
                    content=message["content"],
                    infer=self._infer,
                    session_start=self._session_start,
                )
            )
            self._seq += 1
        for done in await self._backend.enqueue(entries):
            self._writes.add(done)
            done.add_done_callback(self._writes.discard)

    async def store_turn(self, context: LLMContext) -> None:
        """Make what the context gained since the last store durable now (the bot's reply, when its
        turn ends), instead of with the next user turn."""
        await self._store_new_messages(context)

    async def flush(self, timeout: float) -> bool:
        """Wait until this session's queued writes are stored; True if all made it in time."""
        pending = [f for f in self._writes if not f.done()]
        if not pending:
            return True
        done, _ = await asyncio.wait(pending, timeout=timeout)
        return len(done) == len(pending) and all(f.result() for f in done)

    async def store_final(self, context: LLMContext, typed: Sequence[str] = ()) -> None:
        """Store what the last turn added (the bot's final reply) when the session ends.

        ``typed``: the user's latest typed texts as the transport received them, oldest first. Those
        after the last one the context holds never reached it — the client left while Pipecat was
        still handling them — and are stored as user messages too: an accepted turn is not lost.
        """
        await self._store_new_messages(context)
        users = [m["content"] for m in self._conversation(context) if m.get("role") == "user"]
        last = users[-1] if users else None
        cut = next((i + 1 for i in range(len(typed) - 1, -1, -1) if typed[i] == last), 0)
        missing: list[Any] = [{"role": "user", "content": storable(text)} for text in typed[cut:]]
        missing = [m for m in missing if m["content"]]
        if missing:
            context.add_messages(missing)  # as the user aggregator would have; keeps their order
            await self._store_new_messages(context)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await FrameProcessor.process_frame(self, frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        context = frame.context
        try:
            latest: str | None = None
            messages: list[Any] = context.get_messages()
            for message in reversed(messages):
                if isinstance(message, LLMSpecificMessage) or message is self._memory_message:
                    continue
                if message.get("role") == "user" and isinstance(message.get("content"), str):
                    latest = message["content"]
                    break
            if latest:
                await self._store_new_messages(context)
                query = storable(latest)
                if query:
                    await self._enhance_context_with_memories(context, query)
        except Exception as e:
            await self.push_error(error_msg="memory unavailable for this turn", exception=e)
        await self.push_frame(frame, direction)
