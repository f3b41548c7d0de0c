"""Which memories the greeting names: current facts first, fresh and on-topic, each said once.

The greeting names a few memories (``greeting.max_memories``). Taking the newest few, as the listing
returns them, greets a returning user with whatever they said last ("thanks, bye") and repeats a fact
they gave twice. Here a bounded pool of recent candidates (``pool_size``) is ranked instead:

1. **Current facts before raw turns.** A fact extracted by consolidation (no ``role``) outranks what
   the user typed; a superseded fact is never a candidate (``is_current``), nor a turn consolidation
   already turned into facts (``consolidated_at``): its facts speak for it.
2. **Recency** decays with age (``half_life_days``): a fact from yesterday beats one from last year.
3. **Relevance to the agent**: cosine similarity with the agent's own description (the tenant's
   system prompt), weighted by ``relevance_weight`` — a cooking assistant greets with the allergy,
   not the football team.
4. **Near-duplicates merged**: a candidate whose embedding is within ``merge_similarity`` (cosine) of
   one already chosen is the same thing said again; the better-ranked (usually newer) one stays.
5. At most ``limit``.

Embeddings come from the process's WordLlama (≈20 µs a text, docs/pitfalls.md): a pool of 24
candidates costs well under a millisecond, on the event loop, which is cheaper than a thread hop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

# Payload keys consolidation writes (``memory.consolidation``); retention and every read filter on
# the first.
SUPERSEDED_AT = "superseded_at"
SUPERSEDED_BY = "superseded_by"
CONSOLIDATED_AT = "consolidated_at"


@dataclass(frozen=True, slots=True)
class RankingParams:
    half_life_days: float = 30.0
    relevance_weight: float = 0.3
    merge_similarity: float = 0.9
    pool_size: int = 24


def _field(memory: dict[str, Any], key: str) -> Any:
    if key in memory:
        return memory[key]
    metadata = memory.get("metadata")
    return metadata.get(key) if isinstance(metadata, dict) else None


def is_current(memory: dict[str, Any]) -> bool:
    """What reads see (``memory.pgvector.CURRENT``): not a fact superseded by a later one (kept for
    audit until retention or erasure, never said), nor a turn already consolidated into facts."""
    return not _field(memory, SUPERSEDED_AT) and not _field(memory, CONSOLIDATED_AT)


def is_fact(memory: dict[str, Any]) -> bool:
    """An extracted fact (mem0 ``infer=True``): it has no ``role``; raw turns keep the speaker's."""
    return memory.get("role") is None


def _age_days(memory: dict[str, Any], now: datetime) -> float:
    stamp = memory.get("updated_at") or memory.get("created_at")
    if not isinstance(stamp, str):
        return 0.0
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (now - when).total_seconds() / 86400.0)


def rank(
    memories: Sequence[dict[str, Any]],
    *,
    limit: int,
    embed: Callable[[list[str]], np.ndarray],
    about: np.ndarray | None = None,
    params: RankingParams | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The best ``limit`` of ``memories`` for a greeting, best first (see the module docstring).

    ``embed`` turns texts into L2-normalised rows; ``about``: the agent's normalised embedding.
    """
    params = params or RankingParams()
    candidates = [m for m in memories if is_current(m) and str(m.get("memory", "")).strip()]
    if not candidates or limit <= 0:
        return []
    now = now or datetime.now(UTC)
    vectors = np.asarray(embed([str(m["memory"]) for m in candidates]), dtype=np.float32)
    decay = math.log(2) / max(params.half_life_days, 1e-6)
    scored: list[tuple[int, float, int]] = []
    for i, memory in enumerate(candidates):
        recency = math.exp(-decay * _age_days(memory, now))
        relevance = 0.0
        if about is not None:
            relevance = max(0.0, float(vectors[i] @ about))
        score = (1 - params.relevance_weight) * recency + params.relevance_weight * relevance
        scored.append((0 if is_fact(memory) else 1, -score, i))
    scored.sort()
    chosen: list[int] = []
    for _, _, i in scored:
        if any(float(vectors[i] @ vectors[j]) >= params.merge_similarity for j in chosen):
            continue  # the same thing said again: the better-ranked one is already in
        chosen.append(i)
        if len(chosen) == limit:
            break
    return [candidates[i] for i in chosen]
