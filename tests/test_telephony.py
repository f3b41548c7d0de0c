"""Phone calls through Twilio Media Streams, end to end: Twilio's side played by ``tests/fake_twilio.py``
(the webhook and the stream signed with the ``twilio`` package's own ``RequestValidator``, the audio
through Pipecat's own ``TwilioFrameSerializer``, 8 kHz μ-law), the caller's speech by espeak-ng, the
paid APIs by the local fakes of OpenAI's audio API and LLM (Pipecat's real clients talk to them)."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

import pytest
from yarl import URL

from gateway import closecodes
from gateway.keys import registry_key
from tests.clients import refusal_code
from tests.conftest import GatewayFactory
from tests.fake_audio import FakeAudioAPI
from tests.fake_twilio import FakeTwilioAPI, TwilioCall, basic_auth
from tests.phone import NUMBER, RATE, dial, phone_gateway, spoken, stored
from tests.speech import espeak, silence


async def test_a_signed_webhook_is_answered_with_twiml_that_connects_a_media_stream(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token)
    status, body = await call.ring()

    assert status == 200
    response = ElementTree.fromstring(body)
    assert [child.tag for child in response] == ["Connect"]
    (stream,) = response.find("Connect") or []
    url = URL(stream.attrib["url"])
    # The token rides in the path: a <Stream> URL with a query string fails (Twilio error 31920).
    assert url.path.startswith("/telephony/twilio/ws/") and not url.query_string
    assert gateway.app[registry_key].held() == 1  # the call's session is assembled, holding its slot
    token = url.name
    gateway.audit.register("token", token)
    # The call's token opens nothing but its media stream.
    assert await refusal_code(gateway.http, f"{gateway.url.replace('http', 'ws')}/ws-client/{token}") == (
        closecodes.BAD_TOKEN
    )
    assert await call.open_stream() == 101
    await call.start()
    await call.hang_up()
    await gateway.settle()


async def test_the_greeting_is_synthesised_before_the_stream_opens_and_heard_as_it_starts(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token, caller="+15550000001")
    before = len(fake_audio.speeches)
    assert (await call.ring())[0] == 200
    # Twilio has not even opened the stream: the greeting is being synthesised already.
    greeting = await spoken(fake_audio, before, "nice to meet you")
    assert await call.open_stream() == 101
    await call.start()

    await call.first_audio()
    await call.quiet()
    # All of it, 8 kHz μ-law through Pipecat's serializer (the fake speaks ms_per_char per character).
    expected = len(greeting.text) * fake_audio.ms_per_char / 1000
    assert call.heard_seconds() == pytest.approx(expected, abs=0.06)
    assert len(fake_audio.speeches) == before + 1  # synthesised once, never again through the pipeline
    tenant = gateway.tenant
    assert (
        gateway.sample("gateway_greeting_seconds_count", tenant=tenant, memories="none", source="template")
        == 1
    )
    assert gateway.sample("gateway_ttfb_seconds_count", tenant=tenant, service="tts") >= 1
    assert gateway.sample("gateway_vad_wait_seconds") > 0  # the caller's audio went through the VAD
    await call.hang_up()
    await gateway.settle()


async def test_a_returning_callers_greeting_names_what_they_said_last_time(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    said = fake_audio.transcript
    first = dial(gateway, auth_token)
    await first.call()
    await first.quiet()
    before = len(fake_audio.speeches)
    words = espeak("My name is Ada and I sail on weekends.", RATE)
    first.say(silence(0.3, RATE) + words + silence(0.6, RATE))
    await spoken(fake_audio, before, f"I heard: {said}")
    await first.quiet()
    await first.hang_up()
    await gateway.settle()
    # Stored under the caller's number (a tel: URI), the greeting excluded.
    assert await stored(gateway, f"tel:{NUMBER}") == sorted([said, f"I heard: {said}"])

    before = len(fake_audio.speeches)
    again = dial(gateway, auth_token)
    await again.call()
    greeting = await spoken(fake_audio, before, "Welcome back")
    assert "sail on weekends" in greeting.text
    await again.quiet()
    await again.hang_up()

    before = len(fake_audio.speeches)
    stranger = dial(gateway, auth_token, caller="+15559876543")
    await stranger.call()
    assert "nice to meet you" in (await spoken(fake_audio, before, "")).text
    await stranger.hang_up()
    await gateway.settle()
    assert (
        gateway.sample(
            "gateway_greeting_seconds_count", tenant=gateway.tenant, memories="recalled", source="template"
        )
        == 1
    )


async def test_a_call_the_gateway_ends_is_hung_up_through_twilios_api_and_one_the_caller_ends_is_not(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token)
    await call.call()
    await call.quiet()
    (session,) = list(gateway.app[registry_key].sessions)
    await session.close(closecodes.GOING_AWAY, "server shutting down")

    hang_up = await twilio_api.wait_for_hang_up(call.call_sid)
    assert (hang_up.account_sid, hang_up.status) == (call.account_sid, "completed")
    assert hang_up.authorization == basic_auth(call.account_sid, auth_token)
    await asyncio.wait_for(call.closed.wait(), 5)
    await call.finish()

    other = dial(gateway, auth_token)
    await other.call()
    await other.quiet()
    await other.hang_up()
    await gateway.settle()
    assert all(h.call_sid != other.call_sid for h in twilio_api.hang_ups)


@pytest.mark.parametrize(
    "signature", [None, "forged", "other-token", "tampered"], ids=["missing", "forged", "other", "tampered"]
)
async def test_a_webhook_without_twilios_signature_is_refused_with_403(
    make_gateway: GatewayFactory,
    fake_audio: FakeAudioAPI,
    twilio_api: FakeTwilioAPI,
    auth_token: str,
    signature: str | None,
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token)
    if signature == "other-token":
        signature = TwilioCall(gateway.http, call.webhook_url, "x" * 32).sign(call.webhook_url, call.params())
    elif signature == "tampered":  # signed, then another caller's number put in: Twilio's signature no more
        signature = call.sign(call.webhook_url, call.params())
        call.caller = "+15550009999"
    status, body = await call.ring(signature=signature)

    assert status == 403
    assert "Signature" in body
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_signature") == 1
    assert gateway.app[registry_key].held() == 0  # no session, no slot


async def test_a_webhook_for_a_tenant_without_telephony_is_refused_with_403(
    make_gateway: GatewayFactory, auth_token: str
) -> None:
    gateway = await make_gateway()
    call = TwilioCall(gateway.http, f"{gateway.url}/telephony/twilio/{gateway.tenant}", auth_token)
    assert (await call.ring())[0] == 403
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="bad_signature") == 1


async def test_a_media_stream_without_twilios_signature_is_refused_with_403_before_the_upgrade(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token)
    assert (await call.ring())[0] == 200
    other_url = call.stream_url.replace("/ws/", "/ws/x")
    assert await call.open_stream(signature=None) == 403
    assert await call.open_stream(signature=call.sign(other_url)) == 403  # signed, for another URL
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_signature") == 2

    assert await call.open_stream() == 101  # the token was not spent by the refusals
    await call.start()
    await call.first_audio()
    second = dial(gateway, auth_token)
    second.stream_url = call.stream_url  # the same stream URL again, validly signed: single use
    assert await second.open_stream() == 403
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_token") == 1
    await call.hang_up()
    await gateway.settle()


async def test_a_withheld_number_is_nobody_the_call_is_its_own_run(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, fake_audio, twilio_api)
    call = dial(gateway, auth_token, caller=None)
    await call.call()
    (session,) = list(gateway.app[registry_key].sessions)
    assert (session.scope.user_id, session.scope.run_id) == (None, call.call_sid)
    await call.first_audio()
    await call.hang_up()
    await gateway.settle()
