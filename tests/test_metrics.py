"""/metrics tells operators what happened, and nothing about who said what."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import registry_key
from tests.clients import rtvi_client
from tests.conftest import RunningGateway


async def test_two_sessions_give_greeting_count_two_and_no_ids_or_text(gateway: RunningGateway) -> None:
    session_ids = []
    for user in ("metric-user-1", "metric-user-2"):
        resp = await gateway.start(user_id=user, agent_id="agent-x", run_id=f"run-{user}", serializer="rtvi")
        body = await resp.json()
        session_ids.append(body["sessionId"])
        client_ws = await gateway.http.ws_connect(body["wsUrl"])
        client = await rtvi_client(client_ws)
        await client.bot_turn()
        await client.say("secret sentence about my private life")
        await client.ws.close()
    await gateway.settle()

    text = await gateway.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    greeting_count = sum(
        s.value for s in families["gateway_greeting_seconds"].samples if s.name.endswith("_count")
    )
    assert greeting_count == 2
    assert gateway.sample("gateway_sessions_total", tenant=gateway.tenant, outcome="completed") == 2
    assert gateway.sample("gateway_sessions_active", tenant=gateway.tenant) == 0
    assert (
        gateway.sample(
            "gateway_memory_seconds_count", tenant=gateway.tenant, operation="add", backend="pgvector"
        )
        >= 2
    )
    assert gateway.sample("gateway_ws_messages_total", tenant=gateway.tenant, direction="in") >= 2
    for needle in ("metric-user", "agent-x", "run-metric", "secret sentence", *session_ids):
        assert needle not in text
    assert not gateway.app[registry_key].sessions


async def test_metrics_expose_build_info_and_health_endpoints_answer(gateway: RunningGateway) -> None:
    text = await gateway.metrics_text()
    assert 'gateway_build_info{mem0="' in text
    async with gateway.http.get(f"{gateway.url}/healthz") as resp:
        assert resp.status == 200
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 200 and (await resp.json()) == {"ready": True, "sessions": "ok"}
