"""Per-tenant memory settings, validated where the tenant file is loaded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, model_validator

from memory.retrieval import SearchMode


class ServiceParams(BaseModel):
    """Pipecat's ``Mem0MemoryService.InputParams`` (same names and defaults, bounded)."""

    search_limit: int = Field(default=10, ge=1, le=100)
    search_threshold: float = Field(default=0.1, ge=0.0, le=1.0)
    api_version: str | None = None
    system_prompt: str = "Based on previous conversations, I recall: \n\n"
    add_as_system_message: bool = True
    position: int = Field(default=1, ge=0)


class ExtractionLLM(BaseModel):
    """An OpenAI-compatible LLM mem0 may use to extract facts (``infer=True``)."""

    model: str = "gpt-4.1-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


class ConsolidationSettings(BaseModel):
    """Post-session consolidation (``memory.consolidation``): facts extracted off the caller's path.

    With it on, turns are stored raw while the session runs (no LLM on the hot path), and when the
    session ends — or every ``after_turns`` user turns — a job on a durable queue in PostgreSQL has a
    worker extract facts from the new turns with the tenant's ``extraction_llm`` through mem0, then
    compare each new fact with the user's current ones and supersede those it contradicts or repeats.
    """

    enabled: bool = False
    after_turns: int = Field(
        default=0, ge=0, le=1000, description="also queue a job every N user turns (0: only at the end)"
    )
    jobs_per_minute: float = Field(
        default=60.0, gt=0, le=6000, description="per tenant and replica: the worker's token bucket"
    )
    delay_secs: float = Field(
        default=1.0, ge=0, le=3600, description="after the session ends, so its last writes land first"
    )
    supersede: bool = Field(default=True, description="compare new facts with existing ones (one LLM call)")
    max_turns: int = Field(default=200, ge=1, le=2000, description="turns read by one job; the rest next")


class RetentionSettings(BaseModel):
    """How long a tenant's memories are kept; unset = forever (the default).

    A **turn** is a message stored as said (``infer=False``: it has a ``role``), kept ``turns_days``
    after it was said; a **fact** is a memory an extraction LLM wrote (no ``role``), kept
    ``facts_days`` after it was last written or updated. Past that a memory is never recalled again
    (greeting, search, ``GET /v1/memories``, export) and the purge job deletes it with its history.
    """

    turns_days: float | None = Field(default=None, gt=0, le=36_500)
    facts_days: float | None = Field(default=None, gt=0, le=36_500)

    @property
    def turns(self) -> timedelta | None:
        return timedelta(days=self.turns_days) if self.turns_days is not None else None

    @property
    def facts(self) -> timedelta | None:
        return timedelta(days=self.facts_days) if self.facts_days is not None else None

    @property
    def forever(self) -> bool:
        return self.turns_days is None and self.facts_days is None


class MemorySettings(BaseModel):
    """How one tenant's memory is kept.

    ``backend: pgvector`` uses the gateway's PostgreSQL (embedded or ``GATEWAY_DATABASE_URL``) with a
    table of its own; ``backend: platform`` uses the Mem0 platform with the tenant's own key.
    ``local_config`` is merged into the mem0 config the gateway builds (e.g. ``custom_instructions``),
    the way Pipecat's ``Mem0MemoryService(local_config=…)`` takes it — once per tenant, not per call.
    ``search_mode`` picks the per-turn search (``memory.retrieval``); ``retention`` how long memories
    are kept (pgvector only).
    """

    backend: Literal["pgvector", "platform"] = "pgvector"
    api_key_env: str | None = Field(default=None, description="env var holding the Mem0 platform key")
    host: str | None = Field(default=None, description="Mem0 platform host")
    local_config: dict[str, Any] = Field(default_factory=dict)
    extraction_llm: ExtractionLLM | None = None
    params: ServiceParams = Field(default_factory=ServiceParams)
    search_timeout_secs: float = Field(default=0.5, gt=0, le=10)
    consolidation: ConsolidationSettings = Field(default_factory=ConsolidationSettings)
    search_mode: SearchMode = "hybrid"
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.consolidation.enabled and self.extraction_llm is None:
            raise ValueError(
                "consolidation.enabled needs memory.extraction_llm (the LLM that extracts facts)"
            )
        if self.consolidation.enabled and self.backend != "pgvector":
            raise ValueError("consolidation needs backend: pgvector (the Mem0 platform extracts on its own)")
        if self.backend == "platform" and not self.retention.forever:
            raise ValueError(
                "retention applies to memory.backend pgvector; the Mem0 platform keeps memories"
                " by its own rules"
            )
        return self

    @property
    def infer(self) -> bool:
        """Extract facts as each message is written (mem0 ``infer=True`` on the write path).

        Not when consolidating: then turns are written raw and facts extracted after the session.
        """
        return self.extraction_llm is not None and not self.consolidation.enabled

    @property
    def has_facts(self) -> bool:
        """Extracted facts live beside (or instead of) the raw turns."""
        return self.extraction_llm is not None
