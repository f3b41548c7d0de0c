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

The extraction LLM is ``tests.fake_extraction.FakeExtractionLLM``: mem0's real extraction prompt and
JSON parsing over HTTP, our supersede prompt, answered by **rules, not a model**. So this measures the
pipeline — queue, extraction plumbing, decisions applied, what is read back — not a model's judgement.

Reported per mode: greeting recall (the greeting names at least one current fact), staleness (it names
a superseded one: an old value outside "from <old>"), duplicate rate (a current value named twice);
per-turn search recall@5 over the questions (the store's per-turn search as the tenant has it, exact
within the user's scope) and stale@5 (a superseded statement in the top 5); consolidation cost (LLM
calls and seconds per session); the hot path: greeting and turn latency p50 in both modes.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

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


async def _mode(
    ctx: BenchContext, label: str, users: list[User], extractor: Any, consolidate: bool
) -> dict[str, Any]:
    from gateway.keys import backends_key, tenants_key
    from memory import consolidation
    from memory.scope import MemoryScope

    tenant = f"mq_{label}_{int(time.time())}"
    memory: dict[str, Any] = {}
    if consolidate:
        memory = {
            "extraction_llm": {
                "model": "fake-extractor",
                "base_url": extractor.base_url,
                "api_key_env": KEY_ENV,
            },
            "consolidation": {"enabled": True, "delay_secs": 0.0, "jobs_per_minute": 6000},
        }
    settings = {"llm": {"base_url": extractor.base_url, "model": "fake-model"}, "memory": memory}
    turns: list[float] = []
    greetings: list[float] = []
    async with (
        start_gateway(tenants=(tenant,), database_url=ctx.database_url, tenant_settings=settings) as gw,
        aiohttp.ClientSession() as http,
    ):
        backends = gw.app[backends_key]
        calls_before = dict(extractor.calls)
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
        if consolidate:
            pool = await backends._loop_pool()
            async with asyncio.timeout(300):
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
        hits = stale5 = questions = 0
        for user in users:
            scope = MemoryScope(tenant, user.name)
            for slot, value in user.current.items():
                found = await backend.search(scope, SLOTS[slot]["question"], limit=5, threshold=0.0)
                texts = [str(m.get("memory", "")) for m in found]
                questions += 1
                hits += any(_mentions(t, value) for t in texts)
                probe = User(user.name, [], {slot: value}, {slot: user.superseded.get(slot, set())})
                stale5 += any(_stale(t, probe) for t in texts)
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
        search_mode = gw.app[tenants_key].require(tenant).memory.search_mode
    n = len(users)
    return {
        "mode": label,
        "users": n,
        "sessions": sessions,
        "greeting_recall": round(recall / n, 3),
        "staleness": round(stale / n, 3),
        "duplicate_rate": round(dup / n, 3),
        "search_recall_at_5": round(hits / questions, 3),
        "stale_at_5": round(stale5 / questions, 3),
        "search_mode": search_mode,
        "llm_calls_per_session": round(llm_calls / sessions, 2) if consolidate else 0.0,
        "consolidation_s_per_job": round(job_secs / jobs, 4) if jobs else 0.0,
        "jobs": int(jobs),
        "facts_added": int(added or 0),
        "facts_superseded": int(superseded or 0),
        "extract_calls": extractor.calls["extract"] - calls_before["extract"],
        "supersede_calls": extractor.calls["supersede"] - calls_before["supersede"],
        "greeting_p50_ms": summarize_ms(greetings)["p50_ms"],
        "turn_p50_ms": summarize_ms(turns)["p50_ms"],
        "turn_p95_ms": summarize_ms(turns)["p95_ms"],
        "script_s": round(script_secs, 1),
        "_examples": examples,
    }


async def run(ctx: BenchContext) -> ScenarioResult:
    from tests.fake_extraction import FakeExtractionLLM

    os.environ.setdefault(KEY_ENV, "not-a-real-key")
    users = script(4 if ctx.smoke else 50)
    extractor = FakeExtractionLLM()
    await extractor.start()
    try:
        raw = await _mode(ctx, "raw", users, extractor, consolidate=False)
        cons = await _mode(ctx, "consolidated", users, extractor, consolidate=True)
    finally:
        await extractor.close()
    notes = [
        f"{len(users)} synthetic users, {sum(len(u.conversations) for u in users)} conversations "
        f"({sum(len(c) for u in users for c in u.conversations)} user turns), "
        f"{sum(len(u.current) for u in users)} questions; "
        f"{sum(len(s) for u in users for s in u.superseded.values())} facts changed over the script.",
        "The extraction LLM is a local fake (tests/fake_extraction.py) that answers mem0's real "
        "extraction prompt and our supersede prompt by rules: this measures the pipeline, not a model.",
        f"Search is the store's per-turn search as the tenant has it (search_mode {raw['search_mode']}), "
        "exact within the user's scope.",
        "Hot path: greeting_p50_ms is WebSocket connect → greeting; turn_p50/p95_ms send-text → reply, "
        "both measured while the script ran (consolidation jobs ran beside the consolidated mode's turns).",
    ]
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
        title="Memory quality, raw vs consolidated (fake extraction LLM)",
        ylabel="share",
        bars=bars,
    )
    return ScenarioResult(NAME, TITLE, [raw, cons], targets, notes, [plot] if plot else [])
