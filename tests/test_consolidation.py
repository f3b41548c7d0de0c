"""Post-session consolidation (``memory.consolidation``): turns stored raw during the session, facts
extracted through mem0 after it by a durable queue's worker, and facts that a newer one contradicts or
repeats superseded — never greeted or searched again, kept until erasure.

The extraction LLM is ``tests.fake_extraction.FakeExtractionLLM`` (mem0's real prompt and parsing over
HTTP; rules instead of a model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import sql

from gateway.keys import backends_key
from memory import consolidation
from memory.local import LocalMemory, table_name
from memory.scope import MemoryScope
from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_extraction import FakeExtractionLLM

KEY_ENV = "MGW_TEST_EXTRACTION_KEY"


@pytest.fixture
async def extractor() -> AsyncIterator[FakeExtractionLLM]:
    llm = FakeExtractionLLM()
    await llm.start()
    yield llm
    await llm.close()


@pytest.fixture
async def consolidating(
    make_gateway: GatewayFactory, extractor: FakeExtractionLLM, monkeypatch: pytest.MonkeyPatch
) -> RunningGateway:
    monkeypatch.setenv(KEY_ENV, "not-a-real-key")
    return await make_gateway(tenants=[_tenant(extractor)])


def _tenant(extractor: FakeExtractionLLM, **consolidation: Any) -> dict[str, Any]:
    return {
        "name": unique("cons"),
        "memory": {
            "extraction_llm": {
                "model": "fake-extractor",
                "base_url": extractor.base_url,
                "api_key_env": KEY_ENV,
            },
            "consolidation": {"enabled": True, "delay_secs": 0, **consolidation},
        },
    }


async def _consolidated(gateway: RunningGateway, jobs: int, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while (
            gateway.sample(
                "gateway_memory_consolidation_total", tenant=gateway.tenant, outcome="consolidated"
            )
            < jobs
        ):
            await asyncio.sleep(0.05)


async def _session(gateway: RunningGateway, user: str, *lines: str) -> str:
    """One session: its greeting, then ``lines`` said; returns the greeting once the session is over."""
    client = await gateway.connect(user_id=user)
    greeting = await client.bot_turn()
    for line in lines:
        await client.say(line)
    await client.ws.close()
    await gateway.settle()
    return greeting


def _backend(gateway: RunningGateway) -> LocalMemory:
    backend = gateway.app[backends_key]._tenants[gateway.tenant]
    assert isinstance(backend, LocalMemory)
    return backend


def _rows(gateway: RunningGateway, user: str) -> list[dict[str, Any]]:
    backend = _backend(gateway)
    with backend._pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, payload FROM {} WHERE payload->>'user_id' = %s").format(
                sql.Identifier(table_name(gateway.tenant))
            ),
            (f"{gateway.tenant}/{user}",),
        ).fetchall()
    return [{"id": str(r[0]), **r[1]} for r in rows]


async def test_a_session_is_stored_raw_then_consolidated_into_facts(
    consolidating: RunningGateway, extractor: FakeExtractionLLM
) -> None:
    gateway = consolidating
    await _session(gateway, "ada", "I live in Lyon and my dog is called Biscuit")
    # While the session ran, nothing was extracted: the turn went to the store raw.
    await _consolidated(gateway, 1)

    rows = _rows(gateway, "ada")
    facts = sorted(r["data"] for r in rows if "role" not in r)
    assert facts == ["User has a dog named Biscuit", "User lives in Lyon"]
    assert all("consolidated_at" in r for r in rows if "role" in r)
    assert extractor.calls["extract"] == 1
    assert gateway.sample("gateway_memory_facts_total", tenant=gateway.tenant, event="added") == 2

    greeting = await _session(gateway, "ada")
    assert "You told me you have a dog named Biscuit and you live in Lyon" in greeting or (
        "You told me you live in Lyon and you have a dog named Biscuit" in greeting
    ), greeting


async def test_a_fact_the_model_quotes_word_for_word_is_kept_as_a_fact_not_lost_with_its_turn(
    consolidating: RunningGateway, extractor: FakeExtractionLLM
) -> None:
    """mem0 skips an extracted fact whose text some memory it found already has (an exact hash); the
    raw turn it was quoted from must not count as that memory, or the turn is hidden as consolidated
    and the fact never stored."""
    gateway = consolidating
    extractor.verbatim = True
    await _session(gateway, "ada", "I live in Lyon")
    await _consolidated(gateway, 1)

    rows = _rows(gateway, "ada")
    assert [r["data"] for r in rows if "role" not in r] == ["I live in Lyon"]
    assert "live in Lyon" in await _session(gateway, "ada")


async def test_a_contradicted_fact_is_superseded_never_greeted_or_searched_and_kept_until_erasure(
    consolidating: RunningGateway, extractor: FakeExtractionLLM
) -> None:
    gateway = consolidating
    await _session(gateway, "ada", "I live in Lyon")
    await _consolidated(gateway, 1)
    await _session(gateway, "ada", "I moved from Lyon to Oslo")
    await _consolidated(gateway, 2)

    rows = {r["data"]: r for r in _rows(gateway, "ada") if "role" not in r}
    assert set(rows) == {"User lives in Lyon", "User moved to Oslo"}
    old, new = rows["User lives in Lyon"], rows["User moved to Oslo"]
    assert old["superseded_by"] == new["id"] and old["superseded_reason"] == "contradicts"
    assert "superseded_at" not in new
    assert extractor.calls["supersede"] == 1
    assert gateway.sample("gateway_memory_facts_total", tenant=gateway.tenant, event="superseded") == 1

    greeting = await _session(gateway, "ada")
    assert "you moved to Oslo" in greeting and "live in Lyon" not in greeting, greeting

    backend = _backend(gateway)
    scope = MemoryScope(gateway.tenant, "ada")
    found = await backend.search(scope, "where does the user live, Lyon?", limit=10, threshold=0.0)
    assert "User lives in Lyon" not in [m["memory"] for m in found]
    assert "User lives in Lyon" not in [m["memory"] for m in await backend.recent(scope, 50)]

    await backend.forget(scope)
    assert _rows(gateway, "ada") == []


async def test_a_repeated_fact_leaves_one_current_copy(
    consolidating: RunningGateway, extractor: FakeExtractionLLM
) -> None:
    gateway = consolidating
    await _session(gateway, "bo", "I live in Oslo")
    await _consolidated(gateway, 1)
    await _session(gateway, "bo", "I'm based in Oslo")  # a paraphrase: another text, the same fact
    await _consolidated(gateway, 2)

    current = [r["data"] for r in _rows(gateway, "bo") if "role" not in r and "superseded_at" not in r]
    assert current == ["User is based in Oslo"]


async def test_two_facts_of_one_session_on_the_same_subject_keep_the_later(
    consolidating: RunningGateway,
) -> None:
    gateway = consolidating
    await _session(gateway, "cy", "I live in Lyon", "I moved to Oslo")
    await _consolidated(gateway, 1)

    current = [r["data"] for r in _rows(gateway, "cy") if "role" not in r and "superseded_at" not in r]
    assert current == ["User moved to Oslo"]


async def test_an_extraction_outage_retries_the_job_until_it_succeeds(
    consolidating: RunningGateway, extractor: FakeExtractionLLM
) -> None:
    gateway = consolidating
    # The openai SDK under mem0 tries a request three times: all three fail, so the job fails, waits
    # its backoff (2 s) and runs again.
    extractor.fail_next = 3
    await _session(gateway, "di", "I play the cello")
    await _consolidated(gateway, 1, timeout=30)

    assert gateway.sample("gateway_memory_consolidation_total", tenant=gateway.tenant, outcome="retried") == 1
    facts = [r["data"] for r in _rows(gateway, "di") if "role" not in r]
    assert facts == ["User plays the cello"]


async def test_the_queue_holds_one_job_per_scope_and_one_worker_takes_it(
    consolidating: RunningGateway,
) -> None:
    """Replicas share the queue: a job is claimed once (SKIP LOCKED), a repeat request for a waiting
    scope does not add a row, and a request while the job runs makes it run again."""
    gateway = consolidating
    pool = await gateway.app[backends_key]._loop_pool()
    tenant = unique("q")  # a tenant no worker serves: the queue alone
    scope = {"user_id": f"{tenant}/u"}
    await consolidation.request(pool, tenant, scope, 0)
    await consolidation.request(pool, tenant, scope, 0)
    assert (await consolidation.backlog(pool))[tenant] == 1

    claims = await asyncio.gather(*(consolidation.claim(pool, [tenant]) for _ in range(4)))
    taken = [c for c in claims if c is not None]
    assert len(taken) == 1 and taken[0].requested == 2

    await consolidation.request(pool, tenant, scope, 0)  # new turns while it runs
    await consolidation.finish(pool, taken[0])
    again = await consolidation.claim(pool, [tenant])
    assert again is not None and again.requested == 3
    await consolidation.finish(pool, again)
    assert tenant not in await consolidation.backlog(pool)


def test_decisions_naming_unknown_facts_or_reasons_are_ignored() -> None:
    new = [("n-row-0", "User moved to Oslo"), ("n-row-1", "User plays the cello")]
    existing = [("e-row-0", "User lives in Lyon"), *new[:1]]
    answer = (
        '{"superseded": [{"existing": "e0", "by": "n0", "reason": "contradicts"},'
        ' {"existing": "e7", "by": "n0", "reason": "contradicts"},'
        ' {"existing": "e0", "by": "n9", "reason": "repeats"},'
        ' {"existing": "e1", "by": "n0", "reason": "repeats"},'
        ' {"existing": "e0", "by": "n1", "reason": "because"}]}'
    )
    assert consolidation.parse_decisions(answer, new, existing) == [("e-row-0", "n-row-0", "contradicts")]
    assert consolidation.parse_decisions("no json here", new, existing) == []
    fenced = '```json\n{"superseded": [{"existing": "e0", "by": "n1", "reason": "repeats"}]}\n```'
    assert consolidation.parse_decisions(fenced, new, existing) == [("e-row-0", "n-row-1", "repeats")]


def test_consolidation_needs_an_extraction_llm() -> None:
    from memory.config import MemorySettings

    with pytest.raises(ValueError, match="extraction_llm"):
        MemorySettings.model_validate({"consolidation": {"enabled": True}})
    settings = MemorySettings.model_validate(
        {"extraction_llm": {"model": "m"}, "consolidation": {"enabled": True}}
    )
    assert settings.infer is False and settings.has_facts is True


async def test_after_n_turns_a_long_session_is_consolidated_while_it_runs(
    make_gateway: GatewayFactory, extractor: FakeExtractionLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "not-a-real-key")
    gateway = await make_gateway(tenants=[_tenant(extractor, after_turns=2)])
    client = await gateway.connect(user_id="ev")
    await client.bot_turn()
    await client.say("I drive a Volvo")
    await client.say("tell me a joke")  # the second turn: a job is queued, the session goes on
    await _consolidated(gateway, 1)

    assert [r["data"] for r in _rows(gateway, "ev") if "role" not in r] == ["User drives a Volvo"]
    assert await client.say("still here") == "I heard: still here"
