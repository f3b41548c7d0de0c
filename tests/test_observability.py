"""Every metric of the contract (docs/architecture.md §6) after a scripted conversation, with the labels the
dashboards rely on and values that fit what happened; and the ways operators scrape them."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import metrics_runner_key
from tests.conftest import GatewayFactory, RunningGateway, unique

CONTRACT = {
    "gateway_sessions_active": {"tenant"},
    "gateway_sessions_total": {"tenant", "outcome"},
    "gateway_rejections_total": {"tenant", "reason"},
    "gateway_greeting_seconds": {"tenant", "memories", "source"},
    "gateway_memory_seconds": {"tenant", "operation", "backend"},
    "gateway_memory_errors_total": {"tenant", "operation"},
    "gateway_memory_pending_writes": {"tenant"},
    "gateway_ttfb_seconds": {"tenant", "service"},
    "gateway_user_bot_latency_seconds": {"tenant"},
    "gateway_llm_tokens_total": {"tenant", "kind"},
    "gateway_ws_messages_total": {"tenant", "direction"},
    "gateway_build_info": {"version", "pipecat", "mem0"},
    "gateway_event_loop_lag_seconds": set(),
    "gateway_vad_wait_seconds": set(),
}


async def _script(gateway: RunningGateway, sessions: int = 3, turns: int = 2) -> None:
    for n in range(sessions):
        client = await gateway.connect(user_id=f"observed-user-{n}")
        await client.bot_turn()
        for t in range(turns):
            await client.say(f"observation number {t} about topic {n}")
        await client.ws.close()
    await gateway.start(key="mgw_wrong", user_id="x")
    await gateway.settle()


async def test_every_contract_metric_is_exported_with_its_labels_after_a_conversation(
    gateway: RunningGateway,
) -> None:
    await _script(gateway)
    families = {f.name: f for f in text_string_to_metric_families(await gateway.metrics_text())}
    for name, labels in CONTRACT.items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} is not exported"
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples after a conversation"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


async def test_values_match_what_happened(gateway: RunningGateway) -> None:
    await _script(gateway, sessions=3, turns=2)
    tenant = gateway.tenant

    greetings = sum(
        gateway.sample("gateway_greeting_seconds_count", tenant=tenant, memories=kind, source="template")
        for kind in ("none", "recalled", "fallback")
    )
    assert greetings == 3 == gateway.sample("gateway_sessions_total", tenant=tenant, outcome="completed")
    assert gateway.sample("gateway_sessions_active", tenant=tenant) == 0
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="unauthorized") == 1
    # Six user turns, each answered by the LLM: Pipecat's TTFB and usage metrics, one per turn.
    assert gateway.sample("gateway_ttfb_seconds_count", tenant=tenant, service="llm") == 6
    assert gateway.sample("gateway_user_bot_latency_seconds_count", tenant=tenant) == 6
    assert 0 < gateway.sample("gateway_user_bot_latency_seconds_sum", tenant=tenant) < 6 * 5
    assert gateway.sample("gateway_llm_tokens_total", tenant=tenant, kind="prompt") > 0
    assert gateway.sample("gateway_llm_tokens_total", tenant=tenant, kind="completion") > 0
    assert (
        gateway.sample("gateway_memory_seconds_count", tenant=tenant, operation="search", backend="pgvector")
        == 6
    )
    assert gateway.sample("gateway_memory_pending_writes", tenant=tenant) == 0
    assert gateway.sample("gateway_tenant_max_sessions", tenant=tenant) == 100


async def test_openmetrics_is_served_when_asked_for(gateway: RunningGateway) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    async with gateway.http.get(f"{gateway.url}/metrics", headers=headers) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await resp.text()
    assert body.rstrip().endswith("# EOF")
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")


async def test_metrics_port_serves_metrics_and_the_public_port_does_not(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("ops")}], metrics_port=0)
    port = gateway.app[metrics_runner_key].addresses[0][1]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert "gateway_build_info" in await resp.text()
        async with http.get(f"{gateway.url}/metrics") as resp:
            assert resp.status == 404
