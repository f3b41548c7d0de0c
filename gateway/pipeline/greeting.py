"""The bot's first words: what it remembers about the caller, or a plain hello — never a wait.

Memories are fetched as soon as ``/start`` knows who is calling (the socket usually opens a few
milliseconds later, so the greeting is ready when it does); the session waits for them only until the
greeting deadline, counted from the WebSocket accept.

Which memories: ``TenantMemory.for_greeting`` ranks a bounded pool of candidates (current facts before
raw turns, recency, relevance to the agent, near-duplicates merged: ``memory.ranking``). How they are
said: by rule, in the second person (``gateway.pipeline.phrasing``: "You told me you live in Oslo"),
into the tenant's ``greeting.known`` template — or, with ``greeting.mode: llm``, by the tenant's LLM
from the same facts, streamed (``stream_llm``), with a hard deadline on the first token and the
template as the fallback. ``gateway_greeting_seconds{source}`` says which: ``template``, ``llm`` or
``fallback`` (llm mode, and the LLM failed or missed its deadline).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from gateway.logging import get_logger
from gateway.pipeline import phrasing
from gateway.tenants import GreetingSettings, TenantConfig
from memory import ranking
from memory.scope import MemoryScope
from memory.tenant import TenantMemory

log = get_logger(__name__)

Outcome = Literal["recalled", "none", "fallback"]
Source = Literal["template", "llm", "fallback"]


@dataclass(frozen=True, slots=True)
class Greeting:
    text: str
    memories: int
    outcome: Outcome
    # What the greeting names, each a clause in the second person ("you live in Oslo").
    facts: tuple[str, ...] = field(default=())
    source: Source = "template"


def ranking_params(settings: GreetingSettings) -> ranking.RankingParams:
    r = settings.ranking
    return ranking.RankingParams(
        half_life_days=r.half_life_days,
        relevance_weight=r.relevance_weight,
        merge_similarity=r.merge_similarity,
        pool_size=r.pool_size,
    )


def _fill(template: str, facts: str) -> str:
    """``template`` with ``{facts}``; the sentence starts lower-case where the template puts it
    mid-sentence ("Here is what I remember: {facts}")."""
    before = template.split("{facts}", 1)[0].rstrip()
    if before and not re.search(r"[.!?]$", before) and facts[:1].isupper() and not facts.startswith("I "):
        facts = facts[0].lower() + facts[1:]
    return template.format(facts=facts)


def compose(memories: list[dict[str, Any]], settings: GreetingSettings) -> Greeting:
    """The template greeting: the first ``max_memories`` memories that say something, in order."""
    clauses: list[str] = []
    for memory in memories:
        if len(clauses) >= settings.max_memories:
            break
        said = phrasing.clause(str(memory.get("memory", "")), extracted=ranking.is_fact(memory))
        if said and said not in clauses:
            clauses.append(said)
    if not clauses:
        return Greeting(settings.new, 0, "none")
    text = _fill(settings.known, phrasing.sentence(clauses))
    return Greeting(text, len(clauses), "recalled", tuple(clauses))


def fallback(settings: GreetingSettings) -> Greeting:
    return Greeting(settings.new, 0, "fallback")


def start_prefetch(backend: TenantMemory, scope: MemoryScope, tenant: TenantConfig) -> asyncio.Task[Any]:
    """Begin fetching the greeting's memories now; the session collects the result later.

    Twice ``max_memories`` are ranked in: a memory with nothing to say back (a question, "thanks")
    leaves room for the next.
    """
    settings = tenant.greeting
    limit = max(1, 2 * settings.max_memories)
    return asyncio.create_task(
        backend.for_greeting(scope, limit, about=tenant.system_prompt, params=ranking_params(settings)),
        name="greeting-prefetch",
    )


async def collect(task: asyncio.Task[Any], settings: GreetingSettings, deadline: float) -> Greeting:
    """The greeting, from the prefetch if it finishes by ``deadline`` (loop time), else the fallback."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        # Usually done by now (fetched from /start on): no timer, shield or (on Python 3.11, where
        # Pipecat swaps in ``wait_for2``) extra task on the way to the greeting.
        memories = (
            task.result()
            if task.done()
            else await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        )
    except TimeoutError:
        task.cancel()
        log.warning("greeting.deadline_missed")
        return fallback(settings)
    except asyncio.CancelledError:
        if task.cancelled():
            return fallback(settings)
        raise
    except Exception as e:
        # The backend already counted it (gateway_memory_errors_total{operation="get_all"}).
        log.warning("greeting.memory_failed", error=type(e).__name__)
        return fallback(settings)
    return compose(memories, settings)


def llm_messages(greeting: Greeting, tenant: TenantConfig) -> list[dict[str, str]]:
    """The LLM's request: the agent's persona and the instructions, then what it remembers.

    The facts go in the second person, already phrased, so a small model cannot mistake whose they
    are; they are data inside the user message, never instructions.
    """
    facts = "\n".join(f"- {fact[0].upper()}{fact[1:]}." for fact in greeting.facts)
    return [
        {"role": "system", "content": f"{tenant.system_prompt}\n\n{tenant.greeting.llm_instructions}"},
        {"role": "user", "content": f"What you remember about the user (said to them):\n{facts}"},
    ]


class LLMGreetingFailed(Exception):
    """No first token in time, or the endpoint failed before one: say the template instead."""


async def stream_llm(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[dict[str, str]],
    settings: GreetingSettings,
    temperature: float | None = None,
) -> AsyncIterator[str]:
    """The greeting's tokens as the LLM streams them.

    Raises ``LLMGreetingFailed`` if the first token is not there within ``llm_first_token_secs`` (the
    caller then says the template, nothing having been written); after the first token the stream
    ends quietly at ``llm_total_secs`` or on an error — what was said stands, and is the greeting.
    """
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + settings.llm_first_token_secs
    total_deadline = loop.time() + settings.llm_total_secs
    extra: dict[str, Any] = {}
    if temperature is not None:
        extra["temperature"] = temperature
    try:
        async with asyncio.timeout_at(first_deadline):
            created = await client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                max_tokens=settings.llm_max_tokens,
                **extra,
            )
        stream = cast(AsyncStream[ChatCompletionChunk], created)
    except (TimeoutError, Exception) as e:
        raise LLMGreetingFailed(type(e).__name__) from e
    chunks = aiter(stream)
    said = False
    try:
        while True:
            deadline = total_deadline if said else first_deadline
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except (TimeoutError, Exception) as e:
                if not said:
                    raise LLMGreetingFailed(type(e).__name__) from e
                log.info("greeting.llm_cut", error=type(e).__name__)
                break
            if not chunk.choices:
                continue
            text = chunk.choices[0].delta.content
            if text:
                said = True
                yield text
        if not said:
            raise LLMGreetingFailed("empty")
    finally:
        await stream.close()
