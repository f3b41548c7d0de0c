"""An embedder whose weights ship inside a PyPI package, so memory works with no network and no key.

WordLlama's wheel carries ``l2_supercat_256.safetensors`` and its tokenizer; ``disable_download``
makes a missing file an error instead of a silent hub download. One model object is loaded per
process (≈0.2 s, ≈20 µs per text afterwards) and handed to every tenant's mem0 ``Memory`` through
the embedder config's ``model`` field — the same hook mem0's own LangChain embedder uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from mem0.configs.embeddings.base import BaseEmbedderConfig
from mem0.embeddings.base import EmbeddingBase
from mem0.embeddings.configs import EmbedderConfig
from pydantic import field_validator

from memory import mem0compat

PROVIDER = "wordllama"
DIMENSIONS = 256


def load_wordllama() -> Any:
    """Load WordLlama from the files inside its own package directory, never from a hub."""
    import wordllama

    package_dir = Path(wordllama.__file__).parent
    return wordllama.WordLlama.load(cache_dir=package_dir, dim=DIMENSIONS, disable_download=True)


class WordLlamaEmbedding(EmbeddingBase):
    """mem0 embedder backed by a shared, already loaded WordLlama model.

    Vectors are L2-normalised so pgvector's cosine distance and mem0's ``1 - distance`` score agree.
    """

    def __init__(self, config: BaseEmbedderConfig | None = None) -> None:
        super().__init__(config)
        model = self.config.model
        if model is None or isinstance(model, str):
            model = load_wordllama()
        self._model = model
        self.config.embedding_dims = DIMENSIONS

    def embed(
        self, text: str | list[str], memory_action: Literal["add", "search", "update"] | None = None
    ) -> list[float]:
        if isinstance(text, list):
            text = " ".join(str(t) for t in text)
        return _finite(self._model.embed([text], norm=True)[0])

    def embed_batch(
        self, texts: list[str], memory_action: Literal["add", "search", "update"] | None = None
    ) -> list[list[float]]:
        return [_finite(v) for v in self._model.embed(list(texts), norm=True)]


def _finite(vector: Any) -> list[float]:
    """Normalising an all-zero embedding (blank or out-of-vocabulary text) divides 0 by 0; pgvector
    refuses NaN, which would fail the whole write. Such text has no direction: store zeros."""
    return np.nan_to_num(np.asarray(vector, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0).tolist()


class WordLlamaEmbedderConfig(EmbedderConfig):
    """mem0's ``EmbedderConfig`` accepts a fixed list of providers; this subclass adds ours.

    ``MemoryConfig.embedder`` is typed as ``EmbedderConfig``, so an instance of this subclass passes
    validation unchanged — no patching of mem0's validator.
    """

    @field_validator("config")
    @classmethod
    def validate_config(cls, v: dict[str, Any] | None, values: Any) -> dict[str, Any] | None:
        if values.data.get("provider") != PROVIDER:
            raise ValueError(f"WordLlamaEmbedderConfig only configures provider {PROVIDER!r}")
        return v


def register() -> None:
    """Make ``EmbedderFactory`` able to build our provider (idempotent)."""
    mem0compat.register_embedder(PROVIDER, WordLlamaEmbedding)


def embedder_config(model: Any) -> WordLlamaEmbedderConfig:
    register()
    return WordLlamaEmbedderConfig(provider=PROVIDER, config={"model": model, "embedding_dims": DIMENSIONS})
