"""A local stand-in for a paid OpenAI-compatible LLM: real HTTP, real SSE ``chat.completions`` stream.

Pipecat's ``OpenAILLMService`` talks to it through the real ``openai`` SDK code path. The reply is a
deterministic function of the request so tests can assert on it; every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


def reply_for(messages: list[dict[str, Any]]) -> str:
    last_user = next(
        (
            m.get("content")
            for m in reversed(messages)
            if m.get("role") == "user" and isinstance(m.get("content"), str)
        ),
        "",
    )
    return f"I heard: {last_user}"


@dataclass
class FakeLLM:
    delay_secs: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_body(request, await request.json())

    async def _chat_body(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """The streamed reply to an already decoded request (``FakeExtractionLLM`` shares it)."""
        self.requests.append(body)
        text = reply_for(body.get("messages", []))
        created = int(time.time())
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
        }
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if self.delay_secs:
            await asyncio.sleep(self.delay_secs)
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(f"data: {json.dumps(end)}\n\n".encode())
        if body.get("stream_options", {}).get("include_usage"):
            usage: dict[str, Any] = {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": len(words),
                    "total_tokens": 11 + len(words),
                },
            }
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
