"""A local stand-in for a tenant's extraction LLM: real HTTP, the OpenAI chat-completions wire format.

mem0's ``add(infer=True)`` sends its real extraction prompt (``ADDITIVE_EXTRACTION_PROMPT`` plus the
conversation) through the real ``openai`` SDK, and parses the JSON answer with its own code; this server
answers that prompt with ``{"memory": [{"id", "text"}]}`` as a model would, and our supersede prompt
(``memory.consolidation.SUPERSEDE_PROMPT``) with decisions. Streaming requests (a greeting, a turn) get
``FakeLLM``'s "I heard: …".

The "model" is a small set of rules over the user's sentences, written for the evaluation set
(``bench/scenarios/memory_quality.py``) and the tests: each fact has a *slot* (where the user lives,
their job, their dog's name, …) and a *value*; a paraphrase keeps the slot and value under other
words ("User lives in Oslo" / "User is based in Oslo"). The supersede decision is exact on slots: the
same slot with another value contradicts, with the same value repeats. So what it measures is the
pipeline (mem0's parsing, the queue, the decisions applied, what is read back), never a model.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fake_llm import FakeLLM

# (pattern over one user sentence, fact template, slot). The first match of a sentence wins.
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"\bmy name is (?P<v>[A-Z][\w-]*)", re.I), "User's name is {v}", "name"),
    (re.compile(r"\bcall me (?P<v>[A-Z][\w-]*)", re.I), "User goes by {v}", "name"),
    (re.compile(r"\bmoved (?:from [A-Z][\w-]* )?to (?P<v>[A-Z][\w-]*)", re.I), "User moved to {v}", "city"),
    (re.compile(r"\bi live in (?P<v>[A-Z][\w-]*)", re.I), "User lives in {v}", "city"),
    (re.compile(r"\b(?:i'm|i am) based in (?P<v>[A-Z][\w-]*)", re.I), "User is based in {v}", "city"),
    (re.compile(r"\bhome is (?P<v>[A-Z][\w-]*)", re.I), "User's home is {v}", "city"),
    (re.compile(r"\bi work as an? (?P<v>[\w-]+)", re.I), "User works as a {v}", "job"),
    (re.compile(r"\bmy job is (?:being )?an? (?P<v>[\w-]+)", re.I), "User's job is {v}", "job"),
    (re.compile(r"\bi(?:'m| am) now an? (?P<v>[\w-]+)", re.I), "User is now a {v}", "job"),
    (re.compile(r"\bmy dog is called (?P<v>[A-Z][\w-]*)", re.I), "User has a dog named {v}", "dog"),
    (re.compile(r"\bmy dog'?s name is (?P<v>[A-Z][\w-]*)", re.I), "User's dog's name is {v}", "dog"),
    (re.compile(r"\bmy favou?rite food is (?P<v>[\w-]+)", re.I), "User's favourite food is {v}", "food"),
    (re.compile(r"\bi (?:really )?love eating (?P<v>[\w-]+)", re.I), "User loves eating {v}", "food"),
    (re.compile(r"\bmy partner is called (?P<v>[A-Z][\w-]*)", re.I), "User's partner is {v}", "partner"),
    (re.compile(r"\bi(?:'m| am) married to (?P<v>[A-Z][\w-]*)", re.I), "User is married to {v}", "partner"),
    (re.compile(r"\bi play (?:the )?(?P<v>[\w-]+)", re.I), "User plays the {v}", "instrument"),
    (re.compile(r"\bi drive an? (?P<v>[\w-]+)", re.I), "User drives a {v}", "car"),
]
# fact text → (slot, value), for the supersede decision: every template above, read back.
_FACT_FORMS = [
    (re.compile("^" + re.escape(template).replace(re.escape("{v}"), r"(?P<v>[\w-]+)") + "$"), slot)
    for _, template, slot in _RULES
]


def extract(text: str) -> list[str]:
    """The facts the fake model extracts from one user message."""
    facts: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\s+and\s+", text):
        for pattern, template, _ in _RULES:
            match = pattern.search(sentence)
            if match:
                fact = template.format(v=match.group("v"))
                if fact not in facts:
                    facts.append(fact)
                break
    return facts


def slot_of(fact: str) -> tuple[str, str] | None:
    for pattern, slot in _FACT_FORMS:
        match = pattern.match(fact.strip().rstrip("."))
        if match:
            return slot, match.group("v").lower()
    return None


def _new_messages(prompt: str) -> list[str]:
    """The user's lines of mem0's "## New Messages" section (``parse_messages``: "user: …\\n")."""
    section = prompt.split("## New Messages", 1)[1].split("\n## ", 1)[0]
    return [line[len("user: ") :] for line in section.splitlines() if line.startswith("user: ")]


def _existing(prompt: str) -> list[str]:
    section = prompt.split("## Existing Memories", 1)[1].split("\n## ", 1)[0].strip()
    try:
        return [m.get("text", "") for m in json.loads(section)]
    except ValueError:
        return []


@dataclass
class FakeExtractionLLM(FakeLLM):
    """``FakeLLM`` plus non-streaming JSON answers to mem0's extraction and our supersede prompts."""

    calls: dict[str, int] = field(default_factory=lambda: {"extract": 0, "supersede": 0, "chat": 0})
    fail_next: int = 0  # answer this many non-streaming requests with HTTP 500 (a provider outage)
    # Extract a user's line word for word instead of rewriting it ("User lives in …"), as small
    # models often do (SmolLM2-135M copied 146 of its 176 extractions on the evaluation set).
    verbatim: bool = False

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._route)
        app.router.add_get("/v1/models", self._models)
        from aiohttp.test_utils import TestServer

        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def _route(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            self.calls["chat"] += 1
            return await self._stream(request, body)
        self.requests.append(body)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        messages = body.get("messages", [])
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if "Memory Extractor" in system:
            self.calls["extract"] += 1
            known = set(_existing(user))
            lines = _new_messages(user)
            if self.verbatim:
                facts = [line for line in lines if extract(line)]
            else:
                facts = [f for line in lines for f in extract(line)]
            unique = [f for i, f in enumerate(facts) if f not in facts[:i] and f not in known]
            answer: dict[str, Any] = {"memory": [{"id": str(i), "text": f} for i, f in enumerate(unique)]}
        elif "keep a person's long-term memory current" in system:
            self.calls["supersede"] += 1
            answer = {"superseded": self.decide(json.loads(user))}
        else:
            answer = {}
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": json.dumps(answer)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            }
        )

    @staticmethod
    def decide(body: dict[str, Any]) -> list[dict[str, str]]:
        """An existing fact whose slot a new fact fills: contradicted (another value) or repeated."""
        decisions = []
        for old in body.get("existing", []):
            known = slot_of(old["text"])
            if known is None:
                continue
            for new in reversed(body.get("new", [])):  # the last word on a slot wins
                if new["text"] == old["text"]:
                    break  # this batch's own fact: only a later one supersedes it
                fresh = slot_of(new["text"])
                if fresh is not None and fresh[0] == known[0]:
                    reason = "repeats" if fresh[1] == known[1] else "contradicts"
                    decisions.append({"existing": old["id"], "by": new["id"], "reason": reason})
                    break
        return decisions

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await self._chat_body(request, body)
