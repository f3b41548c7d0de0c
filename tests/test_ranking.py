"""Which memories the greeting names (``memory.ranking``), with the real WordLlama embeddings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from memory.ranking import RankingParams, rank

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def embed(embed_model: Any) -> Any:
    def embed(texts: list[str]) -> np.ndarray:
        return np.nan_to_num(np.asarray(embed_model.embed(texts, norm=True), dtype=np.float32))

    return embed


def _m(text: str, days_ago: float = 0, role: str | None = "user", **metadata: Any) -> dict[str, Any]:
    memory: dict[str, Any] = {"memory": text, "created_at": (NOW - timedelta(days=days_ago)).isoformat()}
    if role is not None:
        memory["role"] = role
    if metadata:
        memory["metadata"] = metadata
    return memory


def _texts(memories: list[dict[str, Any]]) -> list[str]:
    return [m["memory"] for m in memories]


def test_current_facts_come_before_raw_turns_however_old(embed: Any) -> None:
    said = _m("I bake bread on Sundays", days_ago=0)
    fact = _m("User has a dog named Biscuit", days_ago=60, role=None)
    assert _texts(rank([said, fact], limit=2, embed=embed, now=NOW)) == [fact["memory"], said["memory"]]


def test_newer_memories_rank_first(embed: Any) -> None:
    old, new = _m("I play the cello", days_ago=90), _m("I sail on weekends", days_ago=1)
    assert _texts(rank([old, new], limit=2, embed=embed, now=NOW)) == [
        "I sail on weekends",
        "I play the cello",
    ]


def test_superseded_facts_and_consolidated_turns_are_never_named(embed: Any) -> None:
    memories = [
        _m("User lives in Lyon", role=None, superseded_at=NOW.isoformat()),
        _m("I live in Lyon", consolidated_at=NOW.isoformat()),
        _m("User moved to Oslo", role=None),
    ]
    assert _texts(rank(memories, limit=3, embed=embed, now=NOW)) == ["User moved to Oslo"]


def test_near_duplicates_are_said_once_the_better_ranked_kept(embed: Any) -> None:
    memories = [
        _m("I love jazz music", days_ago=1),
        _m("I love jazz music!", days_ago=5),
        _m("I sail", days_ago=9),
    ]
    assert _texts(rank(memories, limit=3, embed=embed, now=NOW)) == ["I love jazz music", "I sail"]


def test_relevance_to_the_agent_lifts_what_it_is_about(embed: Any) -> None:
    cooking = embed(["You are a cooking assistant who helps plan meals, recipes and food allergies."])[0]
    memories = [_m("I support Arsenal football club", days_ago=1), _m("I am allergic to peanuts", days_ago=2)]
    plain = rank(memories, limit=1, embed=embed, now=NOW, params=RankingParams(relevance_weight=0.0))
    assert _texts(plain) == ["I support Arsenal football club"]
    on_topic = rank(
        memories, limit=1, embed=embed, about=cooking, now=NOW, params=RankingParams(relevance_weight=0.6)
    )
    assert _texts(on_topic) == ["I am allergic to peanuts"]


def test_at_most_limit(embed: Any) -> None:
    memories = [_m(f"I visited city number {i}", days_ago=i) for i in range(10)]
    assert len(rank(memories, limit=3, embed=embed, now=NOW, params=RankingParams(merge_similarity=1.0))) == 3
    assert rank(memories, limit=0, embed=embed, now=NOW) == []
