"""Who may open a session: keys, tenant status, browser origins and the /start rate limit."""

from __future__ import annotations

import pytest

from gateway import closecodes
from gateway.keys import tenants_key
from gateway.tenants import hash_key, new_key
from tests.clients import refusal_code
from tests.conftest import GatewayFactory, RunningGateway, unique


async def test_start_without_a_key_is_401(gateway: RunningGateway) -> None:
    resp = await gateway.http.post(f"{gateway.url}/start", json={"body": {"user_id": "u1"}})
    assert resp.status == 401
    assert await resp.json() == {"error": "missing or unknown API key"}
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="unauthorized") == 1


@pytest.mark.parametrize(
    "authorization",
    ["Bearer mgw_unknown", "Bearer ", "Basic bWd3Xzp4", "mgw_no-scheme", "Bearer sha256:" + "0" * 64],
    ids=["unknown key", "empty key", "basic auth", "no scheme", "a stored hash presented as key"],
)
async def test_start_with_a_bad_key_is_401(gateway: RunningGateway, authorization: str) -> None:
    resp = await gateway.http.post(
        f"{gateway.url}/start", json={"body": {"user_id": "u1"}}, headers={"Authorization": authorization}
    )
    assert resp.status == 401


async def test_start_of_a_disabled_tenant_is_403(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("off"), "status": "disabled"}])
    resp = await gateway.start(user_id="u1")
    assert resp.status == 403
    assert await resp.json() == {"error": "tenant is disabled"}
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="tenant_disabled") == 1


async def test_key_of_another_tenant_opens_a_session_of_that_tenant_only(
    make_gateway: GatewayFactory,
) -> None:
    a, b = unique("alpha"), unique("beta")
    gateway = await make_gateway(tenants=[{"name": a}, {"name": b}])
    await gateway.tell("I am alpha's customer and I like kites", tenant=a, user_id="kite-user")

    # Tenant B's key with tenant A's user ID: B's session, B's (empty) memory of that ID.
    client = await gateway.connect(tenant=b, user_id="kite-user")
    assert "kites" not in await client.bot_turn()
    assert gateway.sample("gateway_sessions_active", tenant=b) == 1
    assert gateway.sample("gateway_sessions_active", tenant=a) == 0


async def test_a_tenant_with_several_keys_accepts_each(make_gateway: GatewayFactory) -> None:
    second = new_key()
    gateway = await make_gateway(tenants=[{"name": unique("rot")}])
    registry = gateway.app[tenants_key]
    registry.update(gateway.tenant, api_keys=[*registry.require(gateway.tenant).api_keys, hash_key(second)])

    assert (await gateway.start(user_id="u1")).status == 200
    assert (await gateway.start(key=second, user_id="u1")).status == 200


@pytest.fixture
async def strict_origins(make_gateway: GatewayFactory) -> RunningGateway:
    origins = ["https://app.example.com", "https://*.tenant.example"]
    return await make_gateway(tenants=[{"name": unique("web"), "allowed_origins": origins}])


async def _connect_with_origin(gateway: RunningGateway, origin: str | None) -> int | None:
    resp = await gateway.start(user_id="browser-user", serializer="rtvi")
    url = (await resp.json())["wsUrl"]
    headers = {"Origin": origin} if origin else {}
    async with gateway.http.ws_connect(url, headers=headers) as ws:
        msg = await ws.receive(timeout=10)
        return ws.close_code if ws.closed else int(msg.type)


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example.com", "http://app.example.com", "https://tenant.example.evil.com", "null"],
)
async def test_browser_from_an_origin_outside_the_allowlist_is_closed_with_4003(
    strict_origins: RunningGateway, origin: str
) -> None:
    assert await _connect_with_origin(strict_origins, origin) == closecodes.FORBIDDEN
    assert (
        strict_origins.sample(
            "gateway_rejections_total", tenant=strict_origins.tenant, reason="origin_not_allowed"
        )
        == 1
    )


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://eu.tenant.example", None])
async def test_allowed_origins_and_non_browser_clients_connect(
    strict_origins: RunningGateway, origin: str | None
) -> None:
    code = await _connect_with_origin(strict_origins, origin)
    assert code not in (closecodes.FORBIDDEN, None)  # the first message arrived: the session is open


async def test_start_is_rate_limited_per_tenant_with_retry_after(make_gateway: GatewayFactory) -> None:
    slow, other = unique("burst"), unique("calm")
    gateway = await make_gateway(
        tenants=[{"name": slow, "start_rate": {"per_second": 0.5, "burst": 3}}, {"name": other}]
    )
    statuses = [(await gateway.start(tenant=slow, user_id="u1")).status for _ in range(3)]
    refused = await gateway.start(tenant=slow, user_id="u1")

    assert statuses == [200, 200, 200]
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    assert await refused.json() == {"error": "too many /start requests"}
    assert gateway.sample("gateway_rejections_total", tenant=slow, reason="rate_limited") == 1
    assert (await gateway.start(tenant=other, user_id="u1")).status == 200


async def test_session_limit_frees_up_when_a_session_ends(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("pair"), "max_sessions": 2}])
    first = await gateway.connect(user_id="one")
    second = await gateway.connect(user_id="two")
    await first.bot_turn()
    await second.bot_turn()

    assert (await gateway.start(user_id="three")).status == 429
    await second.ws.close()
    await gateway.settle_sessions(1)
    third = await gateway.connect(user_id="three")
    await third.bot_turn()
    assert await third.say("hello again") == "I heard: hello again"


async def test_a_refused_websocket_gets_a_generic_close_reason(gateway: RunningGateway) -> None:
    async with gateway.http.ws_connect(f"{gateway.url}/ws-client/garbage.token.here") as ws:
        msg = await ws.receive(timeout=5)
    assert (ws.close_code, msg.extra) == (closecodes.BAD_TOKEN, "invalid, expired or reused token")
    assert await refusal_code(gateway.http, f"{gateway.url}/ws?token=") == closecodes.BAD_TOKEN
