"""Per-turn search: the vector ranking and PostgreSQL full-text search, fused in one query.

WordLlama embeds a text as the average of static token vectors, so a question is closest to other
questions ("what do i do for a living?" ↔ "how do i meditate?", both mostly "what/how do i"), a name
is one token among many in a long spoken turn, and an inflection ("moved" / "move") is a different
token. The per-turn search therefore ranks the scope's memories twice in one SQL statement
(``memory.pgvector.IndexedPGVector.hybrid_search``) and fuses the two rankings by reciprocal rank
(RRF: ``Σ 1 / (RRF_K + rank)``, Cormack et al. 2009):

* **semantic**: cosine similarity to the embedding of the query's *content words* (the query without
  PostgreSQL's English stop words: "what do i do for a living" → "living");
* **lexical**: ``ts_rank_cd`` of the row's stored ``tsvector`` (a generated column, English stemming,
  GIN-indexed) against the query's words OR-ed (``websearch_to_tsquery``): any shared word stem
  counts, and a memory sharing more of them ranks higher.

Both rank the same rows: the scope's (the user, or agent, or run), unexpired, within retention, at
least ``search_threshold`` similar to the query (mem0's rule: the threshold gates the semantic score
before any combining), one per distinct text (a user who said "yes" forty times holds one "yes" in
the results, not forty) — exact within the scope, like the vector search it replaces
(``memory.pgvector``). ``bench/scenarios/retrieval.py`` measures recall@5 of each ranking and of the
fusion on a scripted question set.
"""

from __future__ import annotations

import re
from typing import Literal

#: ``memory.search_mode``: ``hybrid`` (default), ``vector`` (the same query, lexical ranking off),
#: ``mem0`` (mem0's own ``Memory.search``: vector search plus its keyword boost, as before).
SearchMode = Literal["hybrid", "vector", "mem0"]

#: The text-search configuration of the generated column and of the query (stems English, drops its
#: stop words, keeps any other word as it is).
TEXT_SEARCH_CONFIG = "english"
#: RRF's constant: a row's share from one ranking is 1 / (RRF_K + rank). 60 is the value of the paper
#: and of most engines; it flattens the top ranks so that agreement between the two rankings wins.
RRF_K = 60
#: How deep each ranking contributes (rows beyond it add nothing to the fusion).
DEPTH = 100
#: At most this many distinct query words reach the text search (a pasted essay is not a query).
MAX_TERMS = 32

#: PostgreSQL's English stop words (``tsearch_data/english.stop``, Snowball's list), so the query's
#: embedding leaves out the words the text search ignores too.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
    hers herself it its itself they them their theirs themselves what which who whom this that these those
    am is are was were be been being have has had having do does did doing a an the and but if or because as
    until while of at by for with about against between into through during before after above below to from
    up down in out on off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will just don should
    now""".split()
)

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The text's words, lower-cased, in order (apostrophes split them, as PostgreSQL's parser does)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> str:
    """What the query's embedding is computed from: its words without stop words, or the text itself
    when nothing is left ("how are you?")."""
    kept = [w for w in words(text) if w not in STOP_WORDS]
    return " ".join(kept) if kept else text


def lexical_query(text: str) -> str | None:
    """The text-search query: the query's distinct words OR-ed, for ``websearch_to_tsquery`` (which
    never fails on its input); None when no word is left for it to match."""
    seen: dict[str, None] = {}
    for w in words(text):
        if w not in STOP_WORDS:
            seen.setdefault(w, None)
        if len(seen) >= MAX_TERMS:
            break
    return " or ".join(seen) if seen else None
