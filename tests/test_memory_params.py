"""Every option of Pipecat's Mem0MemoryService works per tenant: InputParams and local_config."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_args

import pytest

from memory.backends import BACKENDS
from memory.config import MemorySettings
from memory.tenant import TenantMemory
from tests.conftest import GatewayFactory, unique
from tests.fake_llm import FakeLLM


def _last_request_with(fake_llm: FakeLLM, text: str) -> list[dict[str, Any]]:
    body = next(r for r in reversed(fake_llm.requests) if text in str(r["messages"][-1]))
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def test_input_params_shape_the_recalled_memories_message(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    params = {
        "search_limit": 2,
        "add_as_system_message": False,
        "position": 0,
        "system_prompt": "MEMORIES:\n",
    }
    gateway = await make_gateway(tenants=[{"name": unique("params"), "memory": {"params": params}}])
    client = await gateway.connect(user_id="gardener")
    await client.bot_turn()
    for text in ("I grow tomatoes", "I grow basil", "I grow peppers", "what do I grow in my garden"):
        await client.say(text)

    messages = _last_request_with(fake_llm, "what do I grow in my garden")
    first_non_system = next(m for m in messages if m["role"] != "system")
    assert first_non_system["role"] == "user" and first_non_system["content"].startswith("MEMORIES:")
    assert first_non_system["content"].count("I grow") == 2
    await client.ws.close()
    await gateway.settle()


@pytest.mark.parametrize(("threshold", "recalled"), [(0.0, True), (0.99, False)])
async def test_search_threshold_decides_which_memories_reach_the_llm(
    make_gateway: GatewayFactory, fake_llm: FakeLLM, threshold: float, recalled: bool
) -> None:
    params = {"search_threshold": threshold}
    gateway = await make_gateway(tenants=[{"name": unique("threshold"), "memory": {"params": params}}])
    client = await gateway.connect(user_id="collector")
    await client.bot_turn()
    await client.say("I collect stamps from Peru")
    question = f"which stamps do I collect {unique('q')}"
    await client.say(question)
    messages = _last_request_with(fake_llm, question)
    recall = [m for m in messages if m["role"] == "developer" and "I recall" in str(m.get("content"))]
    assert any("stamps from Peru" in m["content"] for m in recall) is recalled


async def test_local_config_sections_are_merged_into_the_tenants_mem0_config(
    make_gateway: GatewayFactory, tmp_root: Path
) -> None:
    history = tmp_root / f"{unique('history')}.db"
    gateway = await make_gateway(
        tenants=[{"name": unique("local"), "memory": {"local_config": {"history_db_path": str(history)}}}]
    )
    client = await gateway.connect(user_id="u1")
    await client.bot_turn()
    await client.say("remember this")
    await client.ws.close()
    await gateway.settle()
    assert history.exists() and history.stat().st_size > 0


def test_every_backend_a_tenant_may_name_is_a_complete_tenantmemory_class() -> None:
    names = set(get_args(MemorySettings.model_fields["backend"].annotation))
    assert names == set(BACKENDS), "memory.config's backend names and memory.backends.BACKENDS differ"
    for name, kind in BACKENDS.items():
        assert issubclass(kind, TenantMemory) and not inspect.isabstract(kind), name
