"""Barge-in on a phone call: the caller talks over the bot (espeak-ng speech in real-time 20 ms media
events, through Pipecat's ``TwilioFrameSerializer``), and the bot stops — Pipecat's interruption in
the pipeline, Twilio's ``clear`` on the stream — and the reply is remembered only as far as it was
spoken. The fake TTS speaks slowly here (60 ms a character), so a reply lasts seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import GatewayFactory, RunningGateway
from tests.fake_audio import FakeAudioAPI
from tests.fake_twilio import FakeTwilioAPI, TwilioCall
from tests.phone import NUMBER, RATE, dial, phone_gateway, spoken, stored
from tests.speech import espeak, silence

MS_PER_CHAR = 60.0
ASKED = (
    "Tell me about the sea. Boats sail on it every day. Some are big and some are small. All of them float."
)
REPLY = f"I heard: {ASKED}"
# The transport writes audio this far ahead of real time (gateway.pipeline.transport.AUDIO_LEAD_SECS).
LEAD = 0.2


@pytest.fixture(scope="module")
async def slow_audio() -> AsyncIterator[FakeAudioAPI]:
    api = FakeAudioAPI(ms_per_char=MS_PER_CHAR)
    await api.start()
    yield api
    await api.close()


def seconds_of(text: str) -> float:
    return len(text) * MS_PER_CHAR / 1000


async def heard_until(call: TwilioCall, after: float, seconds: float, timeout: float = 15.0) -> None:
    """Until ``seconds`` of the bot's audio arrived after ``after`` (monotonic)."""
    async with asyncio.timeout(timeout):
        while call.heard_seconds(after) < seconds:
            await asyncio.sleep(0.01)


async def greeted(call: TwilioCall, gateway: RunningGateway) -> None:
    await call.call()
    await call.first_audio()
    await call.quiet()


async def test_speech_over_the_bot_stops_it_and_only_what_was_spoken_is_remembered(
    make_gateway: GatewayFactory, slow_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, slow_audio, twilio_api)
    call = dial(gateway, auth_token)
    await greeted(call, gateway)

    slow_audio.transcript = ASKED
    before = len(slow_audio.speeches)
    asked_until = call.say(silence(0.3, RATE) + espeak("Tell me about the sea.", RATE) + silence(0.4, RATE))
    await spoken(slow_audio, before, "I heard: Tell me about the sea.")
    # Well into the reply's second sentence (its first lasts seconds_of("I heard: Tell me about the sea.")).
    await heard_until(call, asked_until, seconds_of("I heard: Tell me about the sea.") + 0.6)
    slow_audio.transcript = "Stop"
    barged_at = time.monotonic()
    said_until = call.say(espeak("Wait stop please.", RATE) + silence(0.6, RATE))
    await spoken(slow_audio, before, "I heard: Stop")
    await heard_until(call, said_until, seconds_of("I heard: Stop") - 0.05)  # the new reply, all of it
    await call.quiet()

    (cleared_at,) = [t for t in call.clears if t > barged_at]  # Twilio was told to drop what it holds
    assert cleared_at < said_until
    reply_heard = call.heard_seconds(asked_until) - call.heard_seconds(cleared_at)
    # Nothing of the interrupted reply arrived after the clear (the next reply starts after the turn).
    assert sum(len(pcm) for at, pcm in call.heard if cleared_at < at < said_until) == 0
    assert reply_heard < seconds_of(REPLY)
    await call.hang_up()
    await gateway.settle()

    memories = await stored(gateway, f"tel:{NUMBER}")
    (kept,) = [m for m in memories if m.startswith("I heard: Tell")]
    # Whole sentences, from the start, none that was not heard (written at most LEAD ahead of it).
    assert REPLY.startswith(kept) and kept.endswith(".") and kept != REPLY
    assert seconds_of(kept) <= reply_heard + LEAD + 0.1
    assert any(m.startswith("I heard: Stop") for m in memories)  # the turn that interrupted it


async def test_a_caller_muted_until_greeted_cannot_interrupt_the_greeting_but_can_interrupt_replies(
    make_gateway: GatewayFactory, slow_audio: FakeAudioAPI, twilio_api: FakeTwilioAPI, auth_token: str
) -> None:
    gateway = await phone_gateway(make_gateway, slow_audio, twilio_api, mute_until_greeted=True)
    call = dial(gateway, auth_token)
    before = len(slow_audio.speeches)
    await call.call()
    started = await call.first_audio()
    transcriptions = len(slow_audio.transcriptions)
    call.say(silence(0.3, RATE) + espeak("Hello? Is anybody there?", RATE) + silence(0.6, RATE))
    await call.quiet()

    greeting = await spoken(slow_audio, before, "nice to meet you")
    assert not call.clears  # the greeting was not interrupted
    assert call.heard_seconds(started) == pytest.approx(seconds_of(greeting.text), abs=0.1)
    assert len(slow_audio.transcriptions) == transcriptions  # nor was the caller heard meanwhile

    slow_audio.transcript = ASKED
    asked_until = call.say(silence(0.3, RATE) + espeak("Tell me about the sea.", RATE) + silence(0.4, RATE))
    await heard_until(call, asked_until, 1.0)
    slow_audio.transcript = "Stop"
    barged_at = time.monotonic()
    call.say(espeak("Wait stop please.", RATE) + silence(0.6, RATE))
    await spoken(slow_audio, before, "I heard: Stop")
    assert [t for t in call.clears if t > barged_at]  # after the greeting, a barge-in works
    await call.hang_up()
    await gateway.settle()
