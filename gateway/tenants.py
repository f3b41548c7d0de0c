"""Tenants: who may open sessions, with which keys, bot, LLM and memory settings.

Loaded from a YAML or TOML file and validated with pydantic; an invalid file fails start-up with a
message naming the tenant and field. API keys are random 256-bit strings, so a single SHA-256 is a
sound verifier (no password stretching needed); only ``sha256:<hex>`` hashes are ever stored, and a
presented key is compared against every stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from memory.config import MemorySettings

KEY_PREFIX = "mgw_"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class TenantFileError(ValueError):
    pass


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class LLMSettings(BaseModel):
    """An OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, llama.cpp server, …)."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = Field(default=None, description="name of the env var holding the key")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# The voices Pipecat's OpenAITTSService accepts (pipecat.services.openai.tts.VALID_VOICES; a test keeps the
# two in step). Checked here so a typo fails the tenants file instead of every utterance at run time.
OpenAIVoice = Literal[
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
]


def _env_name(name: str | None) -> str | None:
    if name is not None and not ENV_NAME_PATTERN.fullmatch(name):
        # Never echo the value: a pasted key is the likeliest mistake.
        raise ValueError("must be the NAME of an environment variable (like OPENAI_API_KEY), not a key")
    return name


class VADSettings(BaseModel):
    """Silero VAD tuning for voice input; unset fields keep Pipecat's defaults.

    Pipecat's defaults (confidence 0.7, start 0.2 s, stop 0.2 s, min volume 0.6) are what its STT latency
    figures and turn strategies assume, so change them only with a reason.
    """

    confidence: float | None = Field(default=None, ge=0, le=1)
    start_secs: float | None = Field(default=None, gt=0, le=2)
    stop_secs: float | None = Field(default=None, gt=0, le=2)
    min_volume: float | None = Field(default=None, ge=0, le=1)


class STTSettings(BaseModel):
    """Voice in: an OpenAI-compatible ``/audio/transcriptions`` endpoint (OpenAI, Speaches, vLLM, …).

    Pipecat's ``OpenAISTTService`` is segmented: a local Silero VAD cuts the caller's audio into
    utterances and each utterance is one transcription request. Clients send 16-bit mono PCM at
    ``sample_rate`` (Silero works at 8 or 16 kHz only).
    """

    base_url: str | None = Field(default=None, pattern=r"^https?://", description="default: OpenAI")
    model: str | None = Field(default=None, min_length=1, description="default: Pipecat's for the service")
    api_key_env: str | None = Field(
        default=None,
        description="name of the env var holding the key; default OPENAI_API_KEY for OpenAI itself, "
        "none for a custom base_url",
    )
    language: str = Field(default="en", description="a Pipecat Language code: en, en-US, de, pt-BR, …")
    prompt: str | None = Field(default=None, description="vocabulary / style hint for the transcriber")
    sample_rate: Literal[8000, 16000] = 16000
    vad: VADSettings = Field(default_factory=VADSettings)
    turn_detection: Literal["speech_timeout", "smart_turn"] = Field(
        default="speech_timeout",
        description="speech_timeout: the turn ends speech_timeout_secs after VAD silence (no model); "
        "smart_turn: Pipecat's smart-turn v3 model decides (one ONNX session shared by the process, "
        "≈100 ms of CPU per user pause)",
    )
    speech_timeout_secs: float = Field(default=0.6, gt=0, le=5)
    mute_until_greeted: bool = Field(
        default=False,
        description="ignore the caller's speech until the greeting has been spoken (Pipecat's "
        "MuteUntilFirstBotCompleteUserMuteStrategy, what STTMuteFilter became): the greeting cannot be "
        "interrupted; replies still can",
    )

    _api_key_env = field_validator("api_key_env")(_env_name)

    @field_validator("language")
    @classmethod
    def _known_language(cls, code: str) -> str:
        # Imported here, not at module level: the CLI loads tenants without loading Pipecat, and only
        # voice tenants reach this.
        from pipecat.transcriptions.language import Language

        try:
            Language(code)
        except ValueError:
            raise ValueError(f"{code!r} is not a language code Pipecat knows (like en, en-US, de)") from None
        return code


class TTSSettings(BaseModel):
    """Voice out: an OpenAI-compatible ``/audio/speech`` endpoint returning 24 kHz 16-bit PCM."""

    base_url: str | None = Field(default=None, pattern=r"^https?://", description="default: OpenAI")
    model: str | None = Field(default=None, min_length=1, description="default: Pipecat's for the service")
    api_key_env: str | None = Field(
        default=None,
        description="name of the env var holding the key; default OPENAI_API_KEY for OpenAI itself, "
        "none for a custom base_url",
    )
    voice: OpenAIVoice = "alloy"
    instructions: str | None = Field(default=None, description="how to speak (gpt-4o-mini-tts and later)")
    speed: float | None = Field(default=None, ge=0.25, le=4.0)

    _api_key_env = field_validator("api_key_env")(_env_name)


class GreetingRanking(BaseModel):
    """Which memories the greeting names (``memory.ranking``): facts first, fresh, on-topic, once."""

    half_life_days: float = Field(
        default=30.0, gt=0, le=3650, description="recency: a memory's weight halves"
    )
    relevance_weight: float = Field(
        default=0.3, ge=0, le=1, description="weight of similarity to the agent (the system prompt)"
    )
    merge_similarity: float = Field(
        default=0.9, gt=0, le=1, description="cosine at or above which two memories are one"
    )
    pool_size: int = Field(default=24, ge=1, le=100, description="newest candidates ranked")


class TwilioSettings(BaseModel):
    """Phone calls through Twilio Media Streams (``gateway.telephony``): the number's voice webhook is
    ``POST /telephony/twilio/<tenant>``; each call is a voice session of this tenant (its ``stt`` and
    ``tts`` are required), the caller's number its ``user_id``."""

    auth_token_env: str = Field(
        description="name of the env var holding the account's Auth Token: it checks X-Twilio-Signature "
        "on the webhook and the media stream, and hangs up calls through Twilio's REST API"
    )
    agent_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$", description="the calls' agent_id"
    )
    user_id_prefix: str = Field(
        default="tel:",
        pattern=r"^[A-Za-z][A-Za-z0-9._:-]{0,15}$",
        description="a caller's user_id is this + their E.164 number (tel:+15551234567); a withheld "
        "number has none (the call is its own run_id)",
    )
    hang_up: bool = Field(
        default=True, description="end the call through Twilio's REST API when the session ends"
    )
    api_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Twilio's REST API root for hang-ups; default https://api.twilio.com",
    )

    _auth_token_env = field_validator("auth_token_env")(_env_name)


class TelephonySettings(BaseModel):
    twilio: TwilioSettings | None = None


class GreetingSettings(BaseModel):
    max_memories: int = Field(default=3, ge=0, le=10)
    after: Literal["bot_ready", "connect"] = Field(
        default="bot_ready",
        description="bot_ready: RTVI's order (client-ready, bot-ready, then the greeting); connect: as "
        "soon as the socket opens, for clients that never send client-ready",
    )
    deadline_secs: float | None = Field(default=None, gt=0, le=30, description="default: process setting")
    known: str = Field(
        default="Welcome back! {facts}. What would you like to talk about?",
        description="{facts} is one sentence in the second person: 'You told me you live in Oslo and …'",
    )
    new: str = "Hello! It's nice to meet you. How can I help you today?"
    mode: Literal["template", "llm"] = Field(
        default="template",
        description="template: `known` with the facts said back by rule; llm: the tenant's LLM writes it "
        "from the same facts, streamed, with the template as the fallback",
    )
    llm_first_token_secs: float = Field(
        default=1.0, gt=0, le=10, description="llm mode: no first token by then → the template"
    )
    llm_total_secs: float = Field(
        default=5.0, gt=0, le=30, description="llm mode: the whole greeting's bound"
    )
    llm_max_tokens: int = Field(default=80, ge=8, le=400)
    llm_instructions: str = Field(
        default="Greet the returning user in one or two short, warm sentences, mentioning what you "
        "remember about them naturally. Speak to them in the second person. Do not invent anything.",
        description="llm mode: what the LLM is asked to do (the facts follow)",
    )
    ranking: GreetingRanking = Field(default_factory=GreetingRanking)


ORIGIN_PATTERN = re.compile(r"^https?://(\*\.)?[a-z0-9.-]+(:\d{1,5})?$")
HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"


class RateLimit(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float = Field(default=10.0, gt=0)
    burst: int = Field(default=50, ge=1)


class TenantConfig(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    api_keys: list[str] = Field(
        default_factory=list,
        description="sha256:<hex> hashes of the tenant's keys; several during a rotation",
    )
    status: Literal["active", "disabled"] = "active"
    max_sessions: int = Field(default=100, ge=1)
    start_rate: RateLimit = Field(default_factory=RateLimit, description="POST /start per tenant")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser Origins allowed to connect (https://app.example.com, https://*.example.com);"
        " empty = any",
    )
    system_prompt: str = (
        "You are a friendly, concise assistant with long-term memory of this user. "
        "Use what you remember when it helps; keep answers short."
    )
    llm: LLMSettings = Field(default_factory=LLMSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    greeting: GreetingSettings = Field(default_factory=GreetingSettings)
    stt: STTSettings | None = Field(default=None, description="voice in; unset = text only")
    tts: TTSSettings | None = Field(default=None, description="voice out; unset = text only")
    telephony: TelephonySettings = Field(default_factory=TelephonySettings, description="phone calls")

    @model_validator(mode="after")
    def _phones_need_voice(self) -> TenantConfig:
        if self.telephony.twilio is not None and (self.stt is None or self.tts is None):
            raise ValueError("telephony.twilio needs stt and tts: a phone call is voice both ways")
        return self

    @field_validator("api_keys")
    @classmethod
    def _hashes_only(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not re.fullmatch(HASH_PATTERN, key):
                # Never echo the value: if it is not a hash it may be a plaintext key.
                raise ValueError("each entry must be a sha256:<64 hex> hash (use `memory-gateway tenants`)")
        return keys

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        normalised = [o.strip().lower().rstrip("/") for o in origins]
        for origin in normalised:
            if not ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com[:port]")
        return normalised

    @property
    def active(self) -> bool:
        return self.status == "active"

    def allows_origin(self, origin: str | None) -> bool:
        """Browsers always send ``Origin``; other clients don't, and can't be told apart by it."""
        if not self.allowed_origins or origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        for allowed in self.allowed_origins:
            if "://*." in allowed:
                scheme, _, rest = allowed.partition("://*.")
                if origin.startswith(scheme + "://") and origin.endswith("." + rest):
                    return True
            elif origin == allowed:
                return True
        return False


class TenantsFile(BaseModel):
    tenants: list[TenantConfig] = Field(default_factory=list)


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    tenants = raw.get("tenants") if isinstance(raw, dict) else None
    for err in error.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "tenants" and isinstance(loc[1], int) and isinstance(tenants, list):
            entry = tenants[loc[1]] if loc[1] < len(tenants) else {}
            name = entry.get("name", f"#{loc[1]}") if isinstance(entry, dict) else f"#{loc[1]}"
            where = f"tenant {name!r} field {'.'.join(str(p) for p in loc[2:]) or '(entry)'}"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


class TenantRegistry:
    """The tenants currently in force, by name and by key."""

    def __init__(self, tenants: list[TenantConfig], path: Path | None = None) -> None:
        names = [t.name for t in tenants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TenantFileError(f"duplicate tenant names: {', '.join(duplicates)}")
        self._tenants = {t.name: t for t in tenants}
        self.path = path

    @classmethod
    def load(cls, path: Path) -> TenantRegistry:
        text = path.read_text(encoding="utf-8")
        try:
            raw = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise TenantFileError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {e}") from e
        try:
            parsed = TenantsFile.model_validate(raw)
        except ValidationError as e:
            raise TenantFileError(f"{path}: {_describe(e, raw)}") from e
        return cls(parsed.tenants, path)

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        if target is None:
            raise TenantFileError("no tenants file path")
        if target.suffix == ".toml":
            raise TenantFileError(f"{target}: writing TOML tenant files is not supported; use YAML")
        # Only what was written or set: an operator's hand-edited file stays as short as they left it.
        data = TenantsFile(tenants=list(self._tenants.values())).model_dump(mode="json", exclude_unset=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(target)

    def __iter__(self) -> Any:
        return iter(self._tenants.values())

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)

    def authenticate(self, key: str | None) -> TenantConfig | None:
        """The tenant owning ``key``, or None; every stored hash is compared, in constant time each."""
        if not key:
            return None
        presented = hash_key(key)
        found: TenantConfig | None = None
        for tenant in self._tenants.values():
            for stored in tenant.api_keys:
                if hmac.compare_digest(presented, stored):
                    found = tenant
        return found

    def replace(self, other: TenantRegistry) -> None:
        """Adopt a reloaded file's tenants in place: everyone holding this registry sees them.

        Live sessions keep the ``TenantConfig`` they started with; only new requests see the change.
        """
        self._tenants = dict(other._tenants)

    def require(self, name: str) -> TenantConfig:
        tenant = self._tenants.get(name)
        if tenant is None:
            raise TenantFileError(f"no tenant named {name!r}")
        return tenant

    def update(self, name: str, **changes: Any) -> TenantConfig:
        tenant = TenantConfig.model_validate({**self.require(name).model_dump(exclude_unset=True), **changes})
        self._tenants[name] = tenant
        return tenant

    def rotate_key(self, name: str, *, revoke_old: bool = False) -> str:
        """Add a fresh key and return it; keep the newest previous key unless ``revoke_old``.

        Keeping one old key lets the tenant roll the new one out before the old stops working; the
        next rotation (or ``revoke_old``) retires it.
        """
        key = new_key()
        kept = [] if revoke_old else self.require(name).api_keys[-1:]
        self.update(name, api_keys=[*kept, hash_key(key)])
        return key

    def add(self, name: str, **fields: Any) -> tuple[TenantConfig, str]:
        """Create a tenant with a fresh key; the key is returned once and only its hash is kept."""
        if name in self._tenants:
            raise TenantFileError(f"tenant {name!r} already exists")
        key = new_key()
        tenant = TenantConfig(name=name, api_keys=[hash_key(key)], **fields)
        self._tenants[name] = tenant
        return tenant, key
