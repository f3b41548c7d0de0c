"""The LLM mem0 uses for memory extraction (``infer=True``), or an explicit "none".

mem0 builds an LLM client in ``Memory.__init__`` even when every ``add`` passes ``infer=False``; its
default (OpenAI) refuses to start without ``OPENAI_API_KEY``. A tenant without an extraction LLM gets
the ``none`` provider instead: it constructs for free and fails loudly if anything ever asks it to
generate, rather than quietly calling a paid API.
"""

from __future__ import annotations

from typing import Any

from mem0.llms.base import LLMBase
from mem0.llms.configs import LlmConfig
from mem0.utils.factory import LlmFactory
from pydantic import field_validator

NONE_PROVIDER = "none"


class ExtractionDisabledError(RuntimeError):
    pass


class DisabledLLM(LLMBase):
    def generate_response(self, messages: Any, **kwargs: Any) -> str:
        raise ExtractionDisabledError(
            "memory extraction (infer=True) needs an LLM: set memory.extraction_llm in the tenant file"
        )


class DisabledLlmConfig(LlmConfig):
    @field_validator("config")
    @classmethod
    def validate_config(cls, v: dict[str, Any] | None, values: Any) -> dict[str, Any] | None:
        if values.data.get("provider") != NONE_PROVIDER:
            raise ValueError(f"DisabledLlmConfig only configures provider {NONE_PROVIDER!r}")
        return v


def disabled_llm_config() -> DisabledLlmConfig:
    LlmFactory.register_provider(NONE_PROVIDER, f"{__name__}.DisabledLLM")
    return DisabledLlmConfig(provider=NONE_PROVIDER, config={})
