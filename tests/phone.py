"""A phone tenant and its calls, for the telephony and barge-in tests."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.keys import backends_key, tenants_key
from memory.scope import MemoryScope
from tests.conftest import TWILIO_AUTH_ENV as AUTH_ENV
from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_audio import FakeAudioAPI, Speech
from tests.fake_twilio import FakeTwilioAPI, TwilioCall

NUMBER = "+15551234567"
RATE = 8000


def phone_tenant(fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, **stt: Any) -> dict[str, Any]:
    return {
        "name": unique("phone"),
        "stt": {"base_url": fake_audio.base_url, "model": "fake-transcribe", **stt},
        "tts": {"base_url": fake_audio.base_url, "model": "fake-tts", "voice": "nova"},
        "telephony": {"twilio": {"auth_token_env": AUTH_ENV, "api_base_url": twilio_api.base_url}},
    }


async def phone_gateway(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, **stt: Any
) -> RunningGateway:
    gateway = await make_gateway(tenants=[phone_tenant(fake_audio, twilio_api, **stt)])
    gateway.audit.register("phone number", NUMBER)
    return gateway


def dial(gateway: RunningGateway, auth_token: str, caller: str | None = NUMBER) -> TwilioCall:
    return TwilioCall(gateway.http, f"{gateway.url}/telephony/twilio/{gateway.tenant}", auth_token, caller)


async def spoken(fake_audio: FakeAudioAPI, since: int, containing: str, timeout: float = 10.0) -> Speech:
    """The first speech request after ``since`` whose text contains ``containing``."""
    async with asyncio.timeout(timeout):
        while True:
            for speech in fake_audio.speeches[since:]:
                if containing in speech.text:
                    return speech
            await asyncio.sleep(0.01)


async def stored(gateway: RunningGateway, user_id: str) -> list[str]:
    tenant = gateway.app[tenants_key].get(gateway.tenant)
    assert tenant is not None
    backend = await gateway.app[backends_key].for_tenant(tenant.name, tenant.memory)
    return sorted(str(m["memory"]) for m in await backend.all_memories(MemoryScope(tenant.name, user_id)))
