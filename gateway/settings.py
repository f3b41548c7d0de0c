"""Process settings: environment variables prefixed ``GATEWAY_`` (tenants live in their own file)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="gateway processes (serve --workers): each also listens on port + 1 + its index",
    )
    worker_index: int | None = Field(default=None, ge=0, description="set by the supervisor for its workers")
    greeting_board: Path | None = Field(
        default=None,
        description="set by the supervisor for its workers: the file in which each worker posts the "
        "greetings it owes (gateway.pipeline.builds)",
    )
    public_url: str | None = Field(
        default=None, description="Base URL clients reach us at (for wsUrl); default: the request's host"
    )
    data_dir: Path = Field(default=Path.home() / ".memory-gateway")
    tenants_file: Path | None = Field(default=None, description="default: <data_dir>/tenants.yaml")
    tenants_reload_secs: float = Field(
        default=2.0, ge=0, description="how often to check the tenants file for changes; 0 = SIGHUP only"
    )
    database_url: str | None = Field(
        default=None, description="PostgreSQL with pgvector; unset = embedded server under data_dir"
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://…: session limits, token single use and the /start rate shared by every "
        "replica (gateway.cluster.redis); unset = this process alone",
    )
    session_state: Literal["auto", "process", "postgres", "redis"] = Field(
        default="auto",
        description="where session limits, spent tokens and /start buckets live: auto = redis when "
        "GATEWAY_REDIS_URL is set, else this process (serve --workers sets postgres for its workers)",
    )
    redis_prefix: str = Field(default="mgw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    redis_timeout_secs: float = Field(default=0.5, gt=0, le=10, description="bound on every Redis call")
    lease_ttl_secs: float = Field(
        default=15.0,
        ge=1,
        le=600,
        description="a session's slot expires this long after its replica last renewed it (every third)",
    )
    token_secret: SecretStr | None = Field(default=None, description="unset = generated, kept in data_dir")
    token_ttl_secs: float = Field(default=60.0, gt=0, le=3600)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port only (same host); unset = main port",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    # Default LLM for tenants that name none.
    llm_base_url: str | None = None
    llm_model: str = "gpt-4.1-mini"
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_timeout_secs: float = Field(default=30.0, gt=0)
    local_llm: bool = Field(default=False, description="run SmolLM2 via llama.cpp (extra local-llm)")

    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    max_bad_frames: int = Field(default=5, ge=1, description="undecodable frames before close 1007")
    greeting_deadline_secs: float = Field(default=1.0, gt=0, le=30)
    client_ready_timeout_secs: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="greeting in RTVI's order: how long to wait for the client's client-ready (then the "
        "greeting goes anyway); a client that never sends one is better served by greeting.after: connect",
    )
    prefetch_ttl_secs: float = Field(default=120.0, gt=0)
    prestart_secs: float = Field(
        default=10.0,
        ge=0,
        description="/start assembles the session (and starts a voice session's pipeline), which waits "
        "this long for its socket, holding one of the tenant's sessions; 0 assembles it at connect",
    )
    start_concurrency: int = Field(
        default=8,
        ge=1,
        description="sessions whose pipelines may be starting at once; more wait their turn in order",
    )
    build_defer_secs: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description="a greeted text session builds its pipeline once no caller of the process is owed "
        "a greeting, or when its client speaks, but never later than this after asking",
    )
    voice_analyzers: Literal["shared", "pipecat"] = Field(
        default="shared",
        description="shared: every voice session's VAD (and smart-turn) runs on one ONNX session per "
        "process, VAD windows scored in batches on the event loop; pipecat: Pipecat's own analyzers per "
        "session (an ONNX session and a thread each, every audio frame handed to it), the voice "
        "benchmark's baseline",
    )
    vad_batch_secs: float = Field(
        default=0.008,
        ge=0,
        le=0.05,
        description="how long a caller's completed 32 ms VAD window may wait for other sessions' to be "
        "scored with it in one ONNX run (gateway.pipeline.vad) while vad_batch_min_streams sessions "
        "stream audio: at 30 calls 8 ms makes batches of ≈10 and takes the gateway from ≈71 to ≈56 % "
        "of a core; 0 = always the next loop iteration",
    )
    vad_batch_min_streams: int = Field(
        default=16,
        ge=0,
        le=10_000,
        description="sessions streaming audio (estimated from the last second's VAD windows) from which "
        "a window waits vad_batch_secs for others; below, it is scored on the next loop iteration, as "
        "a wait only delays the VAD's verdict when there is nothing to batch with (0: always wait)",
    )
    memory_workers: int = Field(default=8, ge=1, le=256)
    memory_call_timeout_secs: float = Field(default=10.0, gt=0)
    memory_pool_size: int = Field(default=4, ge=1)
    outbox_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="bound on the memory-write outbox (<data_dir>/outbox.db, bytes of stored text and "
        "IDs); when full, writes are still queued in memory but not crash-safe (memory.outbox_full)",
    )
    retention_interval_secs: float = Field(
        default=300.0,
        ge=0,
        description="how often this process purges memories past their tenant's retention (one process "
        "per table at a time); 0: never here (another replica's purge, or none)",
    )
    import_max_items: int = Field(default=500, ge=1, le=10_000, description="memories per POST /v1/memories")
    import_max_bytes: int = Field(
        default=1024 * 1024, ge=16 * 1024, le=64 * 1024 * 1024, description="body bytes per POST /v1/memories"
    )
    shutdown_grace_secs: float = Field(
        default=10.0, ge=0, description="once sessions are closed, how long their last writes may take"
    )
    drain_secs: float = Field(
        default=30.0,
        ge=0,
        description="after SIGTERM, live sessions get this long to end on their own before they are "
        "closed with 1001 (readiness is false and new sessions are refused meanwhile)",
    )
    drain_message: str | None = Field(
        default=None,
        max_length=500,
        description="said to each session still live when the drain time is up, before 1001",
    )
    resume_secs: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="a session whose client's network dropped waits this long for the client to come "
        "back with the same token (wsUrl), then ends; 0 ends it at once",
    )
    heartbeat_secs: float = Field(default=20.0, gt=0)
    idle_timeout_secs: float = Field(
        default=300.0, gt=0, description="close (4008) a session whose client sent nothing for this long"
    )
    send_timeout_secs: float = Field(
        default=10.0, gt=0, description="close (1008) a session whose client stopped reading for this long"
    )
    handshake_timeout_secs: float = Field(
        default=10.0,
        gt=0,
        description="a connection must finish its HTTP request / WebSocket upgrade in this",
    )

    demo: bool | None = Field(
        default=None,
        description="demo mode (gateway.web): the demo page at /demo/, Pipecat's prebuilt UI at /client/ "
        "and a start without a key for demo_tenant, each browser a user of its own by cookie; unset = on "
        "only on the embedded defaults (no GATEWAY_DATABASE_URL, no tenants file given) on a loopback host",
    )
    demo_tenant: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")

    @property
    def resolved_tenants_file(self) -> Path:
        return self.tenants_file or self.data_dir / "tenants.yaml"

    @property
    def demo_enabled(self) -> bool:
        """``GATEWAY_DEMO`` if set; else on for the first-run laptop set-up only: the tenants file ``serve``
        creates with its ``default`` tenant, the embedded PostgreSQL, and nobody else on the network."""
        if self.demo is not None:
            return self.demo
        return self.database_url is None and self.tenants_file is None and _loopback(self.host)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
