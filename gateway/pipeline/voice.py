"""Voice mode: a tenant's optional STT (voice in) and TTS (voice out), built per session, cheaply.

Text mode is what a session runs with neither configured. ``stt`` adds Pipecat's segmented
``OpenAISTTService`` after the transport input, with a Silero VAD on the user aggregator (where Pipecat
1.14 expects it: the aggregator broadcasts the VAD's speaking frames, so the STT upstream of it still sees
them) and turn strategies that fit VAD + STT. ``tts`` puts ``OpenAITTSService`` after the LLM in place of
text mode's ``TextOnlyTextProcessor``: bot text is then spoken, and RTVI still sends
``bot-output`` / ``bot-llm-text`` as the audio goes out. Either half works alone.

What a voice session would otherwise pay on the event loop before saying a word (``bench/voice_construction``,
2 cores): ``SileroVADAnalyzer()`` ≈70-90 ms and ≈9 MiB (it opens an ONNX Runtime session per analyzer),
``LocalSmartTurnAnalyzerV3()`` ≈80 ms (same), each OpenAI audio service ≈30-55 ms (its own ``AsyncOpenAI``
+ httpx client + SSL context). Here, ≈0.4 ms for STT + VAD + turn strategy + TTS together:

* both services get the process-wide ``DefaultAsyncHttpxClient`` (their ``http_client=`` hook): ≈0.14 ms;
* ``VoiceModels`` opens each ONNX model once per process, on first use, and every session's analyzer runs
  on that one session (≈0.02 ms per analyzer, no extra memory). Both models are stateless per call
  (Silero's recurrent state is passed in and out of ``run`` and stays per analyzer; smart-turn is a pure
  function of the audio), and ONNX Runtime allows concurrent ``run`` calls on one session, so sharing
  changes no result. Pipecat has no public hook for it, hence the small subclasses in
  ``gateway.pipeline.pipecatcompat``; ``tests/test_voice.py`` checks they still score exactly like stock
  Pipecat's.
* Every session's VAD windows are scored together, in batches on the event loop
  (``gateway.pipeline.vad.VADBatcher``): no thread per session, no executor round trip per audio frame.
  ``GATEWAY_VOICE_ANALYZERS=pipecat`` builds Pipecat's own analyzers per session instead (an ONNX
  session and a thread each): the voice benchmark's baseline, and a way back should the shared ones
  ever misbehave.

A missing API key (``api_key_env`` names a variable that is unset) does not refuse the session: the
client gets an RTVI ``error`` when it connects, that half falls back to text, and the log names the
variable. The operator's mistake should not look like a client failure (close 1011 carries no reason),
and the conversation and its memory still work, as they do with no LLM (``LLMNotConfigured``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.resources import files

from onnxruntime import InferenceSession
from openai import DefaultAsyncHttpxClient
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.transcriptions.language import Language
from pipecat.turns.user_mute import BaseUserMuteStrategy, MuteUntilFirstBotCompleteUserMuteStrategy
from pipecat.turns.user_start.transcription_user_turn_start_strategy import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from gateway.logging import get_logger
from gateway.pipeline.phone import SAMPLE_RATE as PHONE_SAMPLE_RATE
from gateway.pipeline.pipecatcompat import BatchedSileroVADAnalyzer, SharedSmartTurnAnalyzer
from gateway.pipeline.vad import VADBatcher
from gateway.tenants import STTSettings, TenantConfig, TTSSettings

log = get_logger(__name__)

# OpenAI's /audio/speech "pcm" format is 24 kHz 16-bit mono, whatever the model.
TTS_SAMPLE_RATE = 24000
OPENAI_KEY_ENV = "OPENAI_API_KEY"
# Local servers (Speaches, vLLM, …) ignore the key, but the SDK needs one, and without one it would read
# OPENAI_API_KEY and send the process's OpenAI key to whatever base_url the tenant named.
NO_KEY = "not-needed"

STT_UNAVAILABLE = (
    "Voice input is unavailable: this service's speech-to-text key is not configured. Text works."
)
TTS_UNAVAILABLE = (
    "Voice output is unavailable: this service's text-to-speech key is not configured. Replies come as text."
)


class VoiceNotConfigured(LookupError):
    """``api_key_env`` names an environment variable that is not set."""

    def __init__(self, part: str, env_name: str) -> None:
        super().__init__(f"{part}: environment variable {env_name} is not set")
        self.part = part
        self.env_name = env_name


def resolve_api_key(part: str, settings: STTSettings | TTSSettings) -> str:
    """The key for an audio endpoint, read from the variable the tenant names (never from the file).

    No ``api_key_env`` means OPENAI_API_KEY for OpenAI itself and no key at all for a custom base_url.
    """
    env_name = settings.api_key_env or (OPENAI_KEY_ENV if settings.base_url is None else None)
    if env_name is None:
        return NO_KEY
    key = os.environ.get(env_name)
    if not key:
        raise VoiceNotConfigured(part, env_name)
    return key


class VoiceModels:
    """The process's ONNX sessions for voice: each opened on first use, then shared by every session.

    Lazy, so a text-only deployment never loads them; the first voice session pays the load once.
    ``shared=False`` builds Pipecat's own analyzers per session instead (``GATEWAY_VOICE_ANALYZERS``).
    """

    def __init__(
        self, *, shared: bool = True, vad_gather_secs: float = 0.0, vad_min_streams: int = 0
    ) -> None:
        self._shared = shared
        self._gather = vad_gather_secs
        self._min_streams = vad_min_streams
        self._silero: InferenceSession | None = None
        self._smart_turn: LocalSmartTurnAnalyzerV3 | None = None
        self._batcher: VADBatcher | None = None

    @property
    def batcher(self) -> VADBatcher | None:
        """The VAD batcher, once a shared analyzer was built."""
        return self._batcher

    def load(self) -> None:
        """Open the VAD model now (blocking: call it off the event loop)."""
        if self._silero is None:
            path = files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
            # Pipecat's own loader, so the session options (CPU, one thread) stay Pipecat's.
            self._silero = SileroOnnxModel(str(path), force_onnx_cpu=True).session

    def vad_analyzer(self, params: VADParams | None = None) -> SileroVADAnalyzer:
        if not self._shared:
            return SileroVADAnalyzer(params=params)
        self.load()
        assert self._silero is not None
        if self._batcher is None:
            self._batcher = VADBatcher(self._silero, gather_secs=self._gather, min_streams=self._min_streams)
        return BatchedSileroVADAnalyzer(self._silero, self._batcher, params=params)

    def turn_analyzer(self) -> LocalSmartTurnAnalyzerV3:
        if not self._shared:
            return LocalSmartTurnAnalyzerV3()
        if self._smart_turn is None:
            self._smart_turn = LocalSmartTurnAnalyzerV3()
        return SharedSmartTurnAnalyzer(self._smart_turn)


@dataclass
class Voice:
    """What a session adds for voice; all empty/None in text mode."""

    stt: OpenAISTTService | None = None
    tts: OpenAITTSService | None = None
    vad_analyzer: VADAnalyzer | None = None
    turn_strategies: UserTurnStrategies | None = None
    # Set on PipelineParams: every processor (transport, VAD, STT, turn model, TTS) takes its rate from
    # the pipeline's start. Pipecat's defaults, which text mode keeps.
    audio_in_sample_rate: int = 16000
    audio_out_sample_rate: int = TTS_SAMPLE_RATE
    # What the client is told, as an RTVI error right after bot-ready, about a half left out.
    unavailable: list[str] = field(default_factory=list)
    # The caller is not heard until the greeting has been spoken (stt.mute_until_greeted).
    mute_until_greeted: bool = False

    @property
    def audio_in(self) -> bool:
        """Audio input only with an STT to hear it (otherwise the transport drops client audio)."""
        return self.stt is not None

    @property
    def audio_out(self) -> bool:
        return self.tts is not None

    def input_processors(self) -> list[FrameProcessor]:
        """Between the transport input and the user aggregator."""
        return [self.stt] if self.stt is not None else []

    def mute_strategies(self) -> list[BaseUserMuteStrategy]:
        """The user aggregator's (Pipecat 1.x's replacement for ``STTMuteFilter``)."""
        return [MuteUntilFirstBotCompleteUserMuteStrategy()] if self.mute_until_greeted else []


def _vad_params(settings: STTSettings) -> VADParams:
    return VADParams(**settings.vad.model_dump(exclude_none=True))


def _stop_strategy(settings: STTSettings, models: VoiceModels) -> BaseUserTurnStopStrategy:
    if settings.turn_detection == "smart_turn":
        return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=models.turn_analyzer())
    return SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=settings.speech_timeout_secs)


def create_stt(settings: STTSettings, api_key: str, http_client: DefaultAsyncHttpxClient) -> OpenAISTTService:
    stt_settings = OpenAISTTService.Settings(language=Language(settings.language))
    if settings.model is not None:
        stt_settings.model = settings.model
    if settings.prompt is not None:
        stt_settings.prompt = settings.prompt
    return OpenAISTTService(
        api_key=api_key,
        base_url=settings.base_url,
        http_client=http_client,
        settings=stt_settings,
    )


def create_tts(settings: TTSSettings, api_key: str, http_client: DefaultAsyncHttpxClient) -> OpenAITTSService:
    tts_settings = OpenAITTSService.Settings(voice=settings.voice)
    if settings.model is not None:
        tts_settings.model = settings.model
    if settings.instructions is not None:
        tts_settings.instructions = settings.instructions
    if settings.speed is not None:
        tts_settings.speed = settings.speed
    return OpenAITTSService(
        api_key=api_key,
        base_url=settings.base_url,
        http_client=http_client,
        sample_rate=TTS_SAMPLE_RATE,
        settings=tts_settings,
    )


def build_voice(
    tenant: TenantConfig, models: VoiceModels, http_client: DefaultAsyncHttpxClient, *, phone: bool = False
) -> Voice:
    """The tenant's voice services for one session; a half whose key is missing is left out and reported.

    ``phone``: the call's 8 kHz both ways (``gateway.pipeline.phone``): the VAD and STT take the caller's
    audio as it comes, and the output transport resamples the TTS's 24 kHz once."""
    voice = Voice()
    if phone:
        voice.audio_in_sample_rate = voice.audio_out_sample_rate = PHONE_SAMPLE_RATE
    if tenant.stt is not None:
        try:
            key = resolve_api_key("stt", tenant.stt)
        except VoiceNotConfigured as e:
            log.warning("voice.not_configured", part=e.part, env=e.env_name)
            voice.unavailable.append(STT_UNAVAILABLE)
        else:
            voice.stt = create_stt(tenant.stt, key, http_client)
            voice.vad_analyzer = models.vad_analyzer(_vad_params(tenant.stt))
            voice.mute_until_greeted = tenant.stt.mute_until_greeted
            if not phone:
                voice.audio_in_sample_rate = tenant.stt.sample_rate
            voice.turn_strategies = UserTurnStrategies(
                start=[VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()],
                stop=[_stop_strategy(tenant.stt, models)],
            )
    if tenant.tts is not None:
        try:
            key = resolve_api_key("tts", tenant.tts)
        except VoiceNotConfigured as e:
            log.warning("voice.not_configured", part=e.part, env=e.env_name)
            voice.unavailable.append(TTS_UNAVAILABLE)
        else:
            voice.tts = create_tts(tenant.tts, key, http_client)
    return voice
