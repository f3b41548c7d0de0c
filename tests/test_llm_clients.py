"""LLM clients are per endpoint per process, not per session."""

from __future__ import annotations

from gateway.keys import deps_key
from gateway.pipeline.llm import OpenAIClients, create_http_client
from tests.conftest import RunningGateway


async def test_one_openai_client_per_endpoint() -> None:
    http = create_http_client(5.0)
    try:
        clients = OpenAIClients(http)
        first = clients.get(api_key="k", base_url="http://127.0.0.1:1/v1")
        assert clients.get(api_key="k", base_url="http://127.0.0.1:1/v1") is first
        assert clients.get(api_key="other", base_url="http://127.0.0.1:1/v1") is not first
        assert clients.get(api_key="k", base_url="http://127.0.0.1:2/v1") is not first
    finally:
        await http.aclose()


async def test_sessions_of_a_tenant_share_its_llm_client(gateway: RunningGateway) -> None:
    for user in ("first", "second"):
        client = await gateway.connect(user_id=user)
        await client.bot_turn()
        assert await client.say("hi") == "I heard: hi"
        await client.ws.close()
    assert len(gateway.app[deps_key].openai_clients._clients) == 1
