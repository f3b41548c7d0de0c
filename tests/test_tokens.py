"""Session tokens: only an untampered, unexpired, unused token of this gateway opens a session.

Each case ends the same way for the client — close 4001 with one generic reason, so a forger learns
nothing about which check failed — and is counted as ``bad_token``; no session starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from gateway import closecodes
from tests.clients import refusal_code
from tests.conftest import GatewayFactory, RunningGateway, unique

SECRET = "x" * 48  # the conftest gateway's GATEWAY_TOKEN_SECRET


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def wrong_secret(token: str) -> str:
    _, claims, _ = _parts(token)
    return jwt.encode(claims, "y" * 48, algorithm="HS256")


def altered_user(token: str) -> str:
    header, claims, signature = _parts(token)
    return f"{_b64(header)}.{_b64({**claims, 'uid': 'someone-else'})}.{signature}"


def alg_none(token: str) -> str:
    _, claims, _ = _parts(token)
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def other_algorithm_same_secret(token: str) -> str:
    _, claims, _ = _parts(token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT: a 48-byte key is short for HS512 — the forger's problem
        return jwt.encode(claims, SECRET, algorithm="HS512")


def no_expiry(token: str) -> str:
    _, claims, _ = _parts(token)
    return jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, algorithm="HS256")


def other_audience(token: str) -> str:
    _, claims, _ = _parts(token)
    return jwt.encode({**claims, "aud": "some-other-service"}, SECRET, algorithm="HS256")


FORGERIES: dict[str, Callable[[str], str]] = {
    "signed with the wrong secret": wrong_secret,
    "claims altered after signing": altered_user,
    "alg=none": alg_none,
    "HS512 with the right secret": other_algorithm_same_secret,
    "no expiry claim": no_expiry,
    "minted for another audience": other_audience,
}


async def _token(gateway: RunningGateway, **ids: str) -> str:
    resp = await gateway.start(serializer="rtvi", **ids)
    assert resp.status == 200
    token: str = (await resp.json())["token"]
    return token


def _assert_refused_without_a_session(
    gateway: RunningGateway, refusals: int, tenant: str = "unknown"
) -> None:
    assert gateway.sample("gateway_rejections_total", tenant=tenant, reason="bad_token") == refusals
    assert gateway.sample("gateway_sessions_active", tenant=gateway.tenant) == 0
    assert gateway.sample("gateway_sessions_total", tenant=gateway.tenant, outcome="completed") == 0


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_forged_token_is_closed_with_4001(gateway: RunningGateway, forge: Callable[[str], str]) -> None:
    forged = forge(await _token(gateway, user_id="victim-user"))
    assert (
        await refusal_code(gateway.http, f"{gateway.url}/ws-client/{forged}?serializer=rtvi")
        == closecodes.BAD_TOKEN
    )
    _assert_refused_without_a_session(gateway, 1)


async def test_forged_token_does_not_spend_the_genuine_one(gateway: RunningGateway) -> None:
    genuine = await _token(gateway, user_id="victim-user")
    assert (
        await refusal_code(gateway.http, f"{gateway.url}/ws-client/{altered_user(genuine)}")
        == closecodes.BAD_TOKEN
    )

    client = await gateway.http.ws_connect(f"{gateway.url}/ws-client/{genuine}?serializer=rtvi")
    msg = await client.receive(timeout=10)
    assert msg.type.name == "TEXT"
    await client.close()


async def test_expired_token_is_closed_with_4001(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(token_ttl_secs=0.05)
    token = await _token(gateway, user_id="late-user")
    await asyncio.sleep(0.2)
    assert await refusal_code(gateway.http, f"{gateway.url}/ws-client/{token}") == closecodes.BAD_TOKEN
    # Validly signed, so the refusal is counted under the token's own tenant.
    _assert_refused_without_a_session(gateway, 1, tenant=gateway.tenant)


async def test_replayed_token_is_closed_with_4001(gateway: RunningGateway) -> None:
    token = await _token(gateway, user_id="replay-user")
    first = await gateway.http.ws_connect(f"{gateway.url}/ws-client/{token}?serializer=rtvi")
    await first.receive(timeout=10)

    assert await refusal_code(gateway.http, f"{gateway.url}/ws-client/{token}") == closecodes.BAD_TOKEN
    assert await refusal_code(gateway.http, f"{gateway.url}/ws?token={token}") == closecodes.BAD_TOKEN
    # Validly signed, so the refusal is counted under the token's own tenant.
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_token") == 2
    await first.close()


@pytest.mark.parametrize("substitute", ["user_id=bob-of-tenant-b", "tenant={other}", "agent_id=agent-of-b"])
async def test_token_of_tenant_a_used_with_tenant_b_ids_is_closed_with_4001(
    make_gateway: GatewayFactory, substitute: str
) -> None:
    a, b = unique("alpha"), unique("beta")
    gateway = await make_gateway(tenants=[{"name": a}, {"name": b}])
    token = await _token(gateway, tenant=a, user_id="alice-of-tenant-a")
    query = substitute.format(other=b)

    assert (
        await refusal_code(gateway.http, f"{gateway.url}/ws-client/{token}?serializer=rtvi&{query}") == 4001
    )
    assert gateway.sample("gateway_rejections_total", tenant=a, reason="bad_token") == 1
    assert gateway.sample("gateway_sessions_active", tenant=b) == 0


async def test_token_of_tenant_a_re_signed_for_tenant_b_without_the_secret_is_closed_with_4001(
    make_gateway: GatewayFactory,
) -> None:
    a, b = unique("alpha"), unique("beta")
    gateway = await make_gateway(tenants=[{"name": a}, {"name": b}])
    header, claims, signature = _parts(await _token(gateway, tenant=a, user_id="alice-of-tenant-a"))
    forged = f"{_b64(header)}.{_b64({**claims, 'ten': b})}.{signature}"

    assert await refusal_code(gateway.http, f"{gateway.url}/ws-client/{forged}") == closecodes.BAD_TOKEN
    assert gateway.sample("gateway_sessions_total", tenant=b, outcome="completed") == 0
