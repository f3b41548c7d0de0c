"""With no LLM anywhere, the gateway still greets, still remembers, and says how to add an LLM."""

from __future__ import annotations

from gateway.keys import backends_key, tenants_key
from memory.scope import MemoryScope
from tests.clients import send_text
from tests.conftest import GatewayFactory


async def test_user_turn_without_an_llm_gets_an_error_naming_the_setting_and_is_remembered(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(llm=False)
    client = await gateway.connect(user_id="offline")
    assert "nice to meet you" in (await client.bot_turn()).lower()
    await client.send(send_text("I only drink green tea"))
    error = await client.next("error")
    assert "GATEWAY_LLM_BASE_URL" in error["data"]["error"]
    assert error["data"]["fatal"] is False
    await client.ws.close()
    await gateway.settle()

    tenant = gateway.app[tenants_key].get(gateway.tenant)
    assert tenant is not None
    backend = await gateway.app[backends_key].for_tenant(tenant.name, tenant.memory)
    stored = [m["memory"] for m in await backend.all_memories(MemoryScope(tenant.name, user_id="offline"))]
    assert stored == ["I only drink green tea"]

    again = await gateway.connect(user_id="offline")
    assert "green tea" in await again.bot_turn()
