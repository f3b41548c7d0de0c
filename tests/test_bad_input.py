"""Bad input gets a clear, documented answer and costs the session nothing else."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway import closecodes
from tests.clients import refusal_code, rtvi_client
from tests.conftest import GatewayFactory, RunningGateway, unique


async def test_start_without_any_id_is_400_with_a_json_error(gateway: RunningGateway) -> None:
    resp = await gateway.start()
    assert resp.status == 400
    assert "user_id" in (await resp.json())["error"]
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_request") == 1


async def test_start_with_malformed_json_is_400(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}", "Content-Type": "application/json"}
    resp = await gateway.http.post(f"{gateway.url}/start", data=b"{not json", headers=headers)
    assert resp.status == 400
    assert (await resp.json()) == {"error": "body is not valid JSON"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"transport": "websocket", "body": {"user_id": "u1", "n": ' + b"1" * 5000 + b"}}",
        b"[" * 20_000 + b"]" * 20_000,
    ],
    ids=["number-5000-digits", "nested-20000"],
)
async def test_start_with_json_python_cannot_decode_is_400_not_500(
    gateway: RunningGateway, body: bytes
) -> None:
    """Valid JSON that Python's decoder still refuses (an integer over 4,300 digits: a plain ValueError;
    nesting deeper than it recurses: RecursionError) is a bad body, answered without Python's text."""
    headers = {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}", "Content-Type": "application/json"}
    resp = await gateway.http.post(f"{gateway.url}/start", data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json()) == {"error": "body is not valid JSON"}
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="internal_error") == 0


async def test_start_with_unknown_key_is_401(gateway: RunningGateway) -> None:
    resp = await gateway.start(key="mgw_not-a-real-key", user_id="u1")
    assert resp.status == 401
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="unauthorized") == 1


async def _close_code(gateway: RunningGateway, url: str) -> int | None:
    return await refusal_code(gateway.http, url)


async def test_garbage_token_is_closed_with_4001(gateway: RunningGateway) -> None:
    assert await _close_code(gateway, f"{gateway.url}/ws-client/not.a.token") == closecodes.BAD_TOKEN
    assert await _close_code(gateway, f"{gateway.url}/ws?token=") == closecodes.BAD_TOKEN
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="bad_token") == 2


async def test_reused_token_is_closed_with_4001(gateway: RunningGateway) -> None:
    resp = await gateway.start(user_id="u1", serializer="rtvi")
    url = (await resp.json())["wsUrl"]
    first = await rtvi_client(await gateway.http.ws_connect(url))
    await first.bot_turn()
    assert await _close_code(gateway, url) == closecodes.BAD_TOKEN
    await first.ws.close()


async def test_expired_token_is_closed_with_4001(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(token_ttl_secs=0.2)
    resp = await gateway.start(user_id="u1")
    url = (await resp.json())["wsUrl"]
    await asyncio.sleep(0.4)
    assert await _close_code(gateway, url) == closecodes.BAD_TOKEN


async def test_oversized_message_is_closed_with_1009(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_message_bytes=2048)
    client = await gateway.connect(user_id="u1")
    await client.bot_turn()
    await client.ws.send_str("x" * 4096)
    assert await client.closed() == closecodes.MESSAGE_TOO_BIG
    await gateway.settle()
    assert gateway.sample("gateway_sessions_total", tenant=gateway.tenant, outcome="client_error") == 1
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="message_too_big") == 1


@pytest.mark.parametrize(
    ("serializer", "garbage"),
    [("rtvi", "{not json"), ("rtvi", json.dumps({"hello": "world"})), ("protobuf", b"\xff\xfe\x00garbage")],
)
async def test_garbage_frame_gets_an_rtvi_error_and_the_session_survives(
    gateway: RunningGateway, serializer: str, garbage: str | bytes
) -> None:
    client = await gateway.connect(serializer=serializer, user_id="u1")
    await client.bot_turn()
    if isinstance(garbage, bytes):
        await client.ws.send_bytes(garbage)
    else:
        await client.ws.send_str(garbage)
    error = await client.next("error")
    assert error["data"]["fatal"] is False
    assert "undecodable frame" in error["data"]["error"]
    assert "Traceback" not in json.dumps(error)
    assert await client.say("still there?") == "I heard: still there?"
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="undecodable_frame") == 1


async def test_repeated_garbage_is_closed_with_1007(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_bad_frames=3)
    client = await gateway.connect(user_id="u1")
    await client.bot_turn()
    for _ in range(3):
        await client.ws.send_str("garbage")
    assert await client.closed() == closecodes.INVALID_PAYLOAD
    assert [m["type"] for m in client.received].count("error") >= 2


async def test_tenant_at_its_session_limit_gets_429_at_start(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("small"), "max_sessions": 1}])
    first = await gateway.connect(user_id="first")
    await first.bot_turn()

    refused = await gateway.start(user_id="second")
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert await refused.json() == {"error": "tenant is at its concurrent-session limit"}
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="session_limit") == 1

    await first.ws.close()
    await gateway.settle()
    later = await gateway.connect(user_id="third")
    assert "nice to meet you" in (await later.bot_turn()).lower()


async def test_a_started_session_holds_its_slot_until_its_client_connects(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("small"), "max_sessions": 1}])
    started = await gateway.start(user_id="first", serializer="rtvi")
    assert (await gateway.start(user_id="second")).status == 429

    async with gateway.http.ws_connect((await started.json())["wsUrl"]) as ws:
        client = await rtvi_client(ws, "rtvi")
        assert "nice to meet you" in (await client.bot_turn()).lower()


async def test_token_from_another_replica_gets_4029_at_a_full_one(make_gateway: GatewayFactory) -> None:
    """Any replica verifies any replica's token; the one it connects to enforces its own limit."""
    name = unique("spread")
    replica_a = await make_gateway(tenants=[{"name": name, "max_sessions": 1}])
    replica_b = await make_gateway(tenants=[{"name": name, "max_sessions": 1}])
    on_b = await replica_b.connect(user_id="first")
    await on_b.bot_turn()

    minted_on_a = await replica_a.start(user_id="second", serializer="rtvi")
    ws_url = (await minted_on_a.json())["wsUrl"]
    url = ws_url.replace(replica_a.url.removeprefix("http"), replica_b.url.removeprefix("http"))
    assert await _close_code(replica_b, url) == closecodes.TOO_MANY_SESSIONS
    assert replica_b.sample("gateway_rejections_total", tenant=name, reason="session_limit") == 1


async def test_unknown_serializer_at_connect_is_400_and_the_token_stays_out_of_the_logs(
    gateway: RunningGateway,
) -> None:
    resp = await gateway.start(user_id="u1")
    url = (await resp.json())["wsUrl"].replace("ws://", "http://", 1) + "?serializer=bogus"
    async with gateway.http.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as refused:
        assert refused.status == 400
        assert "serializer must be one of" in (await refused.json())["error"]
    # The run-wide audit (tests/audit.py) fails the run if this token appears in any log line.
