"""Our ``Mem0MemoryService``: Pipecat's processor, with the traps in docs/pitfalls.md taken out.

It *is* a ``Mem0MemoryService`` (same ``InputParams``, same ``get_memories()``, same place in the
pipeline, same context-enhancement format), but:

* the mem0 client is injected — the tenant's shared backend — instead of built in ``__init__``;
* storage goes through the session's ``memory.conversation.ConversationStore``: incremental, durable
  and exactly once, ``infer=False`` unless the tenant configured an extraction LLM (Pipecat re-sends the
  whole context with ``infer=True`` every turn);
* retrieval uses the scope rules in ``memory.scope`` (a new ``run_id`` does not hide old memories),
  is bounded by a deadline, and a miss is counted by the backend instead of silently becoming ``[]``;
* the recalled-memories message replaces the previous one instead of piling up one per turn, and is
  never itself stored as a memory; nor is the greeting (it only restates memories);
* the caller's audio ends here: it has served the STT and the user aggregator's VAD upstream, and
  nothing after the memory service reads it (LLM, TTS, output transport, assistant aggregator), where
  each 20 ms frame would cross four more queues and wake four more tasks (Pipecat's user aggregator
  passes every frame on);
* a spoken turn's search can start before the turn ends (``search_ahead``): its text is known once the
  transcript arrives, while the turn still waits out its ``speech_timeout_secs``; the turn then finds
  its memories ready instead of waiting for them (``gateway.pipeline.searchahead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, LLMContextFrame
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.mem0.memory import Mem0MemoryService

from memory.conversation import ConversationStore, storable

log = logging.getLogger(__name__)


class GatewayMemoryService(Mem0MemoryService):
    def __init__(
        self,
        *,
        store: ConversationStore,
        params: Mem0MemoryService.InputParams | None = None,
        search_timeout: float = 0.5,
        **kwargs: Any,
    ) -> None:
        # Deliberately skip Mem0MemoryService.__init__: it builds a mem0 client per instance.
        FrameProcessor.__init__(self, **kwargs)
        params = params or Mem0MemoryService.InputParams()
        backend, scope = store.backend, store.scope
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

        self._store = store
        self._backend = backend
        self._scope = scope
        self._search_timeout = search_timeout
        self._memory_message: dict[str, Any] | None = None
        self._ahead: tuple[str, asyncio.Task[list[dict[str, Any]]]] | None = None

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

    def search_ahead(self, query: str) -> None:
        """Start searching for ``query`` now; the turn whose text it turns out to be uses the result.
        A later query replaces an earlier one (a transcript that grew), and a turn whose text is
        another searches for its own: nothing is ever answered from a stale search."""
        query = storable(query)
        if not query or (self._ahead is not None and self._ahead[0] == query):
            return
        self._drop_ahead()
        self._ahead = (query, asyncio.create_task(self._retrieve_memories(query), name="memory-search-ahead"))

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel()

    async def _search(self, query: str) -> list[dict[str, Any]]:
        ahead = self._ahead
        if ahead is not None and ahead[0] == query:
            self._ahead = None
            return await ahead[1]
        self._drop_ahead()
        return await self._retrieve_memories(query)

    async def cleanup(self) -> None:
        await super().cleanup()
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ahead[1]

    async def _enhance_context_with_memories(self, context: LLMContext, query: str) -> None:
        if self.last_query == query:
            return
        self.last_query = query  # type: ignore[assignment]  # Pipecat annotates it as None
        memories = await self._search(query)
        messages: list[Any] = list(context.get_messages())
        if self._memory_message is not None:
            messages = [m for m in messages if m is not self._memory_message]
            self._memory_message = self._store.hidden = None
        if memories:
            text = self.system_prompt + "".join(
                f"{i}. {m.get('memory', '')}\n\n" for i, m in enumerate(memories, 1)
            )
            role = "developer" if self.add_as_system_message else "user"
            self._memory_message = self._store.hidden = {"role": role, "content": text}
            messages.insert(max(0, min(self.position, len(messages))), self._memory_message)
        context.set_messages(messages)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await FrameProcessor.process_frame(self, frame, direction)
        if not isinstance(frame, LLMContextFrame):
            if not isinstance(frame, InputAudioRawFrame):
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
                await self._store.store_new(context)
                query = storable(latest)
                if query:
                    await self._enhance_context_with_memories(context, query)
        except Exception as e:
            await self.push_error(error_msg="memory unavailable for this turn", exception=e)
        await self.push_frame(frame, direction)
