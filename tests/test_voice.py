"""Voice mode end to end: real WebSocket, Pipecat's wire formats, Pipecat's OpenAI STT/TTS services talking
HTTP to a local fake of OpenAI's audio API (``tests/fake_audio.py``), a real Silero VAD, the fake LLM.

The caller's speech is a real recording: ``ready.wav`` (16 kHz mono, one spoken word) shipped inside
Pipecat for its Nova Sonic service, its voiced part three times over (≈1 s). Silero does not take
synthetic signals for speech (measured: a sine scores ≤0.13, noise ≤0.03, a formant-filtered pulse-train
"vowel" ≈0.75 for ≈100 ms, then decays), so a synthetic signal would leave the VAD-driven STT path
unexercised; the recording scores ≥0.98 while voiced. The fake answers every segment with a fixed
transcript, and records how much audio it was sent."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import wave
from dataclasses import dataclass, field
from typing import Any, get_args

import aiohttp
import numpy as np
import onnxruntime
import pipecat
import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.services.openai.tts import VALID_VOICES
from pydantic import ValidationError

from gateway.keys import backends_key, tenants_key
from gateway.pipeline.voice import VoiceModels
from gateway.tenants import OpenAIVoice, TenantConfig, TenantFileError, TenantRegistry
from memory.scope import MemoryScope
from tests.clients import WireClient, rtvi, send_text
from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_audio import FakeAudioAPI
from tests.fake_llm import FakeLLM

SPEECH_PATH = os.path.join(os.path.dirname(pipecat.__file__), "services", "aws", "nova_sonic", "ready.wav")
RATE = 16000
CHUNK = RATE // 50 * 2  # 20 ms of 16-bit mono, what browser clients send


def speech() -> bytes:
    """≈1 s of continuous speech: the recording's voiced part (≈0.33 s), three times over.

    Once, the word is too short for Pipecat's VAD: its volume gate lags (a rolling loudness window), so
    the 0.2 s of confident-and-loud it needs to start can fall short depending on how the 32 ms windows
    align. Three in a row give one VAD segment of ≥0.3 s whatever the alignment.
    """
    with wave.open(SPEECH_PATH) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    envelope = np.convolve(np.abs(samples.astype(np.float64)), np.ones(160) / 160, mode="same")
    voiced = np.flatnonzero(envelope > 0.05 * envelope.max())
    return np.tile(samples[voiced[0] : voiced[-1]], 3).tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


@dataclass
class VoiceClient(WireClient):
    """A ``WireClient`` that also keeps the bot's audio and can send the caller's."""

    audio: list[OutputAudioRawFrame] = field(default_factory=list)

    async def _decode(self, msg: aiohttp.WSMessage) -> dict[str, Any] | None:
        if msg.type == aiohttp.WSMsgType.BINARY:
            frame = await self._proto.deserialize(msg.data)
            if isinstance(frame, InputAudioRawFrame):  # an AudioRawFrame on the wire
                self.audio.append(OutputAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels))
                return {"type": "audio"}
        message = await super()._decode(msg)
        if message is not None and message.get("type") == "raw-audio":
            data = message["data"]
            audio = base64.b64decode(data["base64Audio"])
            self.audio.append(OutputAudioRawFrame(audio, data["sampleRate"], data["numChannels"]))
        return message

    async def send_audio(self, pcm: bytes) -> None:
        """Stream ``pcm`` in 20 ms chunks at real-time pace, as a microphone would."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n, i in enumerate(range(0, len(pcm), CHUNK)):
            await asyncio.sleep(max(0.0, started + n * 0.02 - loop.time()))
            chunk = pcm[i : i + CHUNK]
            if self.serializer == "rtvi":
                data = {"base64Audio": base64.b64encode(chunk).decode(), "sampleRate": RATE, "numChannels": 1}
                await self.ws.send_str(json.dumps(rtvi("raw-audio", data)))
            else:
                payload = await self._proto.serialize(OutputAudioRawFrame(chunk, RATE, 1))
                assert isinstance(payload, bytes)
                await self.ws.send_bytes(payload)

    async def until(self, type_: str, text: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Messages up to and including the next one of ``type_`` (whose text is ``text``, if given)."""
        start = len(self.received)
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next(type_)
                if text is None or message.get("data", {}).get("text") == text:
                    return self.received[start:]

    def audio_seconds(self) -> float:
        return sum(len(f.audio) / 2 / f.sample_rate for f in self.audio)


def voice_tenant(fake_audio: FakeAudioAPI, *, stt: Any = True, tts: Any = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": unique("voice")}
    if stt:
        spec["stt"] = {"base_url": fake_audio.base_url, "model": "fake-transcribe", "language": "en"}
        if isinstance(stt, dict):
            spec["stt"].update(stt)
    if tts:
        spec["tts"] = {"base_url": fake_audio.base_url, "model": "fake-tts", "voice": "nova"}
        if isinstance(tts, dict):
            spec["tts"].update(tts)
    return spec


async def connect(gateway: RunningGateway, serializer: str = "protobuf", **ids: Any) -> VoiceClient:
    resp = await gateway.start(serializer=serializer, **ids)
    assert resp.status == 200, await resp.text()
    ws = await gateway.http.ws_connect((await resp.json())["wsUrl"])
    client = VoiceClient(ws, serializer)
    gateway.clients.append(client)
    return client


async def stored(gateway: RunningGateway, user_id: str) -> list[str]:
    tenant = gateway.app[tenants_key].get(gateway.tenant)
    assert tenant is not None
    backend = await gateway.app[backends_key].for_tenant(tenant.name, tenant.memory)
    return sorted(str(m["memory"]) for m in await backend.all_memories(MemoryScope(tenant.name, user_id)))


def text_of(messages: list[dict[str, Any]], type_: str) -> str:
    """The text of ``type_`` messages; ``bot-output`` counted once per segment (it is sent as the segment
    is announced and again once spoken)."""
    found = [m["data"] for m in messages if m.get("type") == type_]
    if type_ == "bot-output":
        return " ".join({d["segment_id"]: d["text"].strip() for d in found}.values())
    return "".join(d["text"] for d in found)


@pytest.mark.parametrize("serializer", ["protobuf", "rtvi"])
async def test_voice_greeting_arrives_as_audio_and_as_text(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, serializer: str
) -> None:
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio)])
    before = len(fake_audio.speeches)
    client = await connect(gateway, serializer, user_id="voice-caller")
    await client.ready()
    messages = await client.until("bot-stopped-speaking")

    greeting = text_of(messages, "bot-llm-text")
    assert "nice to meet you" in greeting.lower()
    assert "nice to meet you" in text_of(messages, "bot-output").lower()
    spoken = " ".join(s.text for s in fake_audio.speeches[before:])
    assert "nice to meet you" in spoken.lower()
    assert {(s.model, s.voice, s.response_format) for s in fake_audio.speeches[before:]} == {
        ("fake-tts", "nova", "pcm")
    }
    assert client.audio and {f.sample_rate for f in client.audio} == {24000}
    # All of what the fake synthesised reached the client (pacing may add nothing, drop nothing).
    expected = sum(len(s.text) for s in fake_audio.speeches[before:]) * fake_audio.ms_per_char / 1000
    assert client.audio_seconds() == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(
    ("serializer", "turn_detection", "keyed"),
    [
        ("protobuf", "speech_timeout", False),
        ("rtvi", "speech_timeout", True),
        ("protobuf", "smart_turn", False),
    ],
)
async def test_spoken_turn_is_transcribed_answered_spoken_and_remembered(
    make_gateway: GatewayFactory,
    fake_audio: FakeAudioAPI,
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
    serializer: str,
    turn_detection: str,
    keyed: bool,
) -> None:
    stt: dict[str, Any] = {"turn_detection": turn_detection}
    tts: dict[str, Any] = {}
    # Without a key named, a custom base_url gets a placeholder, never the process's OPENAI_API_KEY.
    stt_auth = tts_auth = "Bearer not-needed"
    keys = {"MGW_TEST_STT_KEY": "stt-" + unique("k"), "MGW_TEST_TTS_KEY": "tts-" + unique("k")}
    if keyed:  # each key is read from the variable its settings name
        for env, value in keys.items():
            monkeypatch.setenv(env, value)
        stt["api_key_env"], tts["api_key_env"] = "MGW_TEST_STT_KEY", "MGW_TEST_TTS_KEY"
        stt_auth, tts_auth = (f"Bearer {value}" for value in keys.values())
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, stt=stt, tts=tts or True)])
    for env, value in keys.items():  # the run's privacy audit checks no log line or metric shows them
        gateway.audit.register(env, value)
    speeches_before_greeting = len(fake_audio.speeches)
    client = await connect(gateway, serializer, user_id="speaker")
    await client.ready()
    await client.until("bot-stopped-speaking")
    transcriptions, speeches = len(fake_audio.transcriptions), len(fake_audio.speeches)
    greeting_audio = len(client.audio)

    await client.send_audio(silence(0.2) + speech() + silence(0.5))
    messages = await client.until("bot-stopped-speaking")

    said = fake_audio.transcript
    (request,) = fake_audio.transcriptions[transcriptions:]
    assert (request.model, request.language, request.sample_rate) == ("fake-transcribe", "en", RATE)
    assert 0.4 < request.seconds < 3.0  # the VAD's segment (+ Pipecat's 0.5 s of padding), not the stream
    assert request.authorization == stt_auth
    assert {s.authorization for s in fake_audio.speeches[speeches_before_greeting:]} == {tts_auth}
    assert [m["data"]["text"] for m in messages if m["type"] == "user-transcription"] == [said]
    types = [m["type"] for m in messages]
    assert types.index("user-started-speaking") < types.index("user-transcription")  # VAD opened the turn
    assert fake_llm.requests[-1]["messages"][-1] == {"role": "user", "content": said}
    reply = f"I heard: {said}"
    assert text_of(messages, "bot-llm-text") == reply
    assert text_of(messages, "bot-output") == reply
    assert " ".join(s.text for s in fake_audio.speeches[speeches:]) == reply
    assert len(client.audio) > greeting_audio
    await client.ws.close()
    await gateway.settle()

    assert await stored(gateway, "speaker") == sorted([said, reply])  # and not the greeting
    # Pipecat's own signals reached the metrics: its VAD-stop → bot-speech latency, and each service's TTFB.
    tenant = gateway.tenant
    assert gateway.sample("gateway_user_bot_latency_seconds_count", tenant=tenant) == 1
    for service in ("stt", "llm", "tts"):
        assert gateway.sample("gateway_ttfb_seconds_count", tenant=tenant, service=service) >= 1, service


async def test_text_still_works_in_a_voice_session(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI
) -> None:
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio)])
    client = await connect(gateway, user_id="typist")
    await client.ready()
    await client.until("bot-stopped-speaking")
    speeches = len(fake_audio.speeches)

    await client.send(send_text("I typed this"))
    messages = await client.until("bot-output", text="I heard: I typed this")
    # send-text with audio_response false: shown, not spoken (the TTS passes skip_tts text through).
    assert text_of(messages, "bot-output") == "I heard: I typed this"
    assert len(fake_audio.speeches) == speeches


async def test_tts_only_tenant_types_in_and_hears_back(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI
) -> None:
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, stt=False)])
    client = await connect(gateway, user_id="reader")
    await client.ready()
    await client.until("bot-stopped-speaking")
    speeches = len(fake_audio.speeches)

    await client.send(rtvi("send-text", {"content": "read this to me", "options": {"run_immediately": True}}))
    messages = await client.until("bot-stopped-speaking")
    assert text_of(messages, "bot-output") == "I heard: read this to me"
    assert [s.text for s in fake_audio.speeches[speeches:]] == ["I heard: read this to me"]


@pytest.mark.parametrize("part", ["stt", "tts"])
async def test_missing_key_is_reported_to_the_client_and_that_half_falls_back_to_text(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    env = f"MGW_TEST_UNSET_{part.upper()}_KEY"
    monkeypatch.delenv(env, raising=False)
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, **{part: {"api_key_env": env}})])
    client = await connect(gateway, "rtvi", user_id="no-key")

    error = await client.next("error")
    assert error["data"]["error"].startswith("Voice input" if part == "stt" else "Voice output")
    assert "unavailable" in error["data"]["error"]
    assert env not in error["data"]["error"]  # the operator's log names the variable; the client needn't
    assert error["data"]["fatal"] is False
    assert "nice to meet you" in (await client.bot_turn()).lower()
    if part == "stt":  # the greeting is still being spoken
        await client.until("bot-stopped-speaking")
    speeches = len(fake_audio.speeches)
    await client.send(send_text("typing works"))
    # In voice mode the greeting's bot-output follows its audio, so look for this reply's.
    messages = await client.until("bot-output", text="I heard: typing works")
    assert text_of(messages, "bot-llm-text") == "I heard: typing works"
    assert len(fake_audio.speeches) == speeches
    logged = [json.loads(line) for line in gateway.audit.log_path.read_text().splitlines()]
    assert {"event": "voice.not_configured", "part": part, "env": env}.items() <= next(
        e for e in logged if e.get("event") == "voice.not_configured" and e.get("env") == env
    ).items()


# --- configuration --------------------------------------------------------------------------------------


def test_voice_settings_are_validated_without_echoing_secrets(tmp_path: Any) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  - name: acme\n    stt:\n      api_key_env: sk-proj-abcdef0123456789\n", encoding="utf-8"
    )
    with pytest.raises(TenantFileError) as caught:
        TenantRegistry.load(path)
    assert "tenant 'acme' field stt.api_key_env" in str(caught.value)
    assert "sk-proj" not in str(caught.value)

    for bad in (
        {"stt": {"language": "klingon"}},
        {"stt": {"sample_rate": 44100}},  # Silero: 8 or 16 kHz only
        {"stt": {"base_url": "file:///etc"}},
        {"tts": {"voice": "hal9000"}},
        {"tts": {"speed": 10}},
    ):
        with pytest.raises(ValidationError):
            TenantConfig.model_validate({"name": "acme", **bad})
    tenant = TenantConfig.model_validate({"name": "acme"})
    assert tenant.stt is None and tenant.tts is None  # text mode by default

    path.write_text(
        "tenants:\n  - name: acme\n"
        "    stt: {base_url: 'http://stt.local/v1', language: de, turn_detection: smart_turn}\n"
        "    tts: {api_key_env: ACME_TTS_KEY, voice: coral}\n",
        encoding="utf-8",
    )
    (loaded,) = TenantRegistry.load(path)
    assert loaded.stt is not None and loaded.tts is not None
    assert (loaded.stt.language, loaded.stt.turn_detection, loaded.stt.sample_rate) == (
        "de",
        "smart_turn",
        RATE,
    )
    assert (loaded.tts.api_key_env, loaded.tts.voice, loaded.tts.model) == ("ACME_TTS_KEY", "coral", None)


def test_tts_voices_match_what_pipecat_accepts() -> None:
    assert set(get_args(OpenAIVoice)) == set(VALID_VOICES)


# --- shared ONNX sessions -----------------------------------------------------------------------------


def _confidences(analyzer: SileroVADAnalyzer, pcm: bytes) -> list[float]:
    analyzer.set_sample_rate(RATE)
    window = analyzer.num_frames_required() * 2
    return [
        float(np.asarray(analyzer.voice_confidence(pcm[i : i + window])).ravel()[0])
        for i in range(0, len(pcm) - window + 1, window)
    ]


async def test_shared_vad_sessions_score_like_pipecats_own_and_keep_their_own_state() -> None:
    models = VoiceModels()
    first, second = models.vad_analyzer(), models.vad_analyzer()
    assert first._model.session is second._model.session
    audio = silence(0.2) + speech() + silence(0.5)
    stock = _confidences(SileroVADAnalyzer(), audio)
    assert max(stock) > 0.9
    # Interleaved on one session: recurrent state must stay per analyzer.
    a, b = [], []
    window = 512 * 2
    first.set_sample_rate(RATE)
    second.set_sample_rate(RATE)
    for i in range(0, len(audio) - window + 1, window):
        a.append(float(np.asarray(first.voice_confidence(audio[i : i + window])).ravel()[0]))
        b.append(float(np.asarray(second.voice_confidence(silence(0.032))).ravel()[0]))
    assert a == pytest.approx(stock, abs=1e-5)
    assert max(b) < 0.1
    for analyzer in (first, second):
        await analyzer.cleanup()


async def test_shared_smart_turn_sessions_predict_like_pipecats_own() -> None:
    models = VoiceModels()
    shared, other = models.turn_analyzer(), models.turn_analyzer()
    assert shared._session is other._session
    stock = LocalSmartTurnAnalyzerV3()
    audio = speech() + silence(0.1)
    results = []
    for analyzer in (stock, shared):
        analyzer.set_sample_rate(RATE)
        for i in range(0, len(audio), CHUNK):
            analyzer.append_audio(audio[i : i + CHUNK], is_speech=i < len(speech()))
        state, metrics = await analyzer.analyze_end_of_turn()
        assert state in (EndOfTurnState.COMPLETE, EndOfTurnState.INCOMPLETE)
        results.append((state, getattr(metrics, "probability", None)))
        await analyzer.cleanup()
    assert results[0][1] is not None
    assert results[0] == results[1]  # same verdict, same probability to the last bit


async def test_concurrent_voice_sessions_open_one_onnx_session_between_them(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    class CountingSession(onnxruntime.InferenceSession):
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            opened.append(os.path.basename(str(path)))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, tts=False)])
    clients = [await connect(gateway, "rtvi", user_id=f"u{i}") for i in range(3)]
    for client in clients:
        assert "nice to meet you" in (await client.bot_turn()).lower()
    assert opened == ["silero_vad.onnx"]


async def test_a_spoken_turns_latency_runs_from_where_the_speech_really_ended(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI
) -> None:
    """Voice in, text out: user→bot latency from the VAD's verdict less its ``stop_secs`` (the real end
    of speech), so it includes both waits a turn's end costs by configuration."""
    stt = {"vad": {"stop_secs": 0.3}, "speech_timeout_secs": 0.4}
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, stt=stt, tts=False)])
    client = await connect(gateway, user_id="latency")
    await client.ready()
    await client.bot_turn()
    await client.send_audio(silence(0.2) + speech() + silence(0.9))
    await client.next("bot-llm-stopped")

    tenant = gateway.tenant
    assert gateway.sample("gateway_user_bot_latency_seconds_count", tenant=tenant) == 1
    assert gateway.sample("gateway_user_bot_latency_seconds_sum", tenant=tenant) >= 0.3 + 0.4


async def test_a_spoken_turns_memories_are_searched_once_while_the_turn_still_waits(
    make_gateway: GatewayFactory, fake_audio: FakeAudioAPI
) -> None:
    """The search starts with the transcript (``gateway.pipeline.searchahead``), not when the turn ends
    ``speech_timeout_secs`` later; the turn then uses it instead of searching again."""
    gateway = await make_gateway(tenants=[voice_tenant(fake_audio, stt={"speech_timeout_secs": 1.5})])
    tenant = gateway.tenant

    def searches() -> float:
        return gateway.sample(
            "gateway_memory_seconds_count", tenant=tenant, operation="search", backend="pgvector"
        )

    client = await connect(gateway, "rtvi", user_id="ahead")
    await client.ready()
    await client.until("bot-stopped-speaking")
    before = searches()
    await client.send_audio(silence(0.2) + speech() + silence(0.3))
    heard = await client.until("user-transcription")
    async with asyncio.timeout(1.0):  # well inside the turn's 1.5 s wait for more words
        while searches() == before:
            await asyncio.sleep(0.01)
    assert "user-stopped-speaking" not in [m["type"] for m in heard]  # the turn has not ended yet
    await client.until("bot-llm-stopped")
    assert searches() == before + 1
