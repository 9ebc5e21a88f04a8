"""Pseudo-queries cut from a corpus: training questions for a collection that has none.

Why this works for elastic training: distillation needs only text that looks like a query to the
*teacher* (the full model) and lands near the corpus's documents; the teacher's scores over the
fixed document embeddings are the labels. Spans of the corpus's own documents are in its domain
and vocabulary, which questions from another collection are not (BENCHMARKS.md, "Label-free
corpus adaptation", measures both).

Recipes (``kind``):

- ``span``: a run of ``min_words..max_words`` consecutive words from a random position of a
  random document (query-like length: NQ questions average ~9 words, BEIR claims ~12);
- ``sentence`` (the default): one sentence of a random document, cut to ``max_words`` (kept if
  >= ``min_words``). A whole sentence reads more like a real query than words cut mid-sentence,
  and the small points trained on it keep more on every corpus measured;
- ``title``: a document's title (collections with informative titles; documents without one are
  skipped and counted);
- ``prose``: a ``span`` of running text: at least 80 % of its words are made of letters, so
  citation rows, tables and runs of numbers are skipped and counted. Meant for *long*
  pseudo-queries (``pseudo:prose:30-90``): a collection whose users send queries of a few
  sentences (cacm's longest reach 79 words) needs the small points to have seen inputs that long,
  which the 4-16-word recipes never show them (BENCHMARKS.md, issue 14, session 27).

A recipe may carry its own lengths, ``RECIPE:MIN-MAX`` (:func:`parse_recipe`), so one training
run can mix short sentences with long prose spans.

Seeded and deduplicated (after :func:`~elasticdenser.data.leakage.normalize_question`), so the
same corpus and seed always give the same questions.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from elasticdenser.data.leakage import normalize_question
from elasticdenser.data.queries import QueryFile
from elasticdenser.data.types import Document, Query
from elasticdenser.errors import InvalidInputError

__all__ = ["PSEUDO_KINDS", "parse_recipe", "pseudo_queries"]

PSEUDO_KINDS = ("span", "sentence", "title", "prose")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
#: a word of running text: letters (any script), inner apostrophes / hyphens, trailing punctuation
_PROSE_WORD = re.compile(r"[(\"']?[^\W\d_]+(?:['\-][^\W\d_]+)*[.,;:!?)\"']*")
PROSE_SHARE = 0.8


def parse_recipe(recipe: str, min_words: int, max_words: int) -> Tuple[str, int, int]:
    """``KIND`` or ``KIND:MIN-MAX`` -> ``(kind, min_words, max_words)``; without lengths the given
    defaults (the config's ``pseudo_min_words`` / ``pseudo_max_words``) apply."""
    kind, sep, lengths = str(recipe).strip().partition(":")
    if kind not in PSEUDO_KINDS:
        raise InvalidInputError(f"pseudo-query recipe {recipe!r}: kind must be one of {', '.join(PSEUDO_KINDS)}")
    if sep:
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", lengths)
        if match is None:
            raise InvalidInputError(f"pseudo-query recipe {recipe!r}: lengths are written MIN-MAX in words, e.g. {kind}:30-90")
        min_words, max_words = int(match.group(1)), int(match.group(2))
    if not 1 <= min_words <= max_words:
        raise InvalidInputError(f"pseudo-query recipe {recipe!r}: lengths need 1 <= min <= max, got {min_words}-{max_words}")
    return kind, min_words, max_words


def _is_prose(words: List[str]) -> bool:
    return sum(bool(_PROSE_WORD.fullmatch(w)) for w in words) >= PROSE_SHARE * len(words)


def _span(words: List[str], rng: np.random.Generator, lo: int, hi: int) -> str:
    length = int(rng.integers(lo, hi + 1))
    if len(words) <= length:
        return " ".join(words)
    start = int(rng.integers(0, len(words) - length + 1))
    return " ".join(words[start:start + length])


def _sentence(text: str, rng: np.random.Generator, lo: int, hi: int) -> str:
    sentences = [s for s in _SENTENCE_END.split(text) if len(s.split()) >= lo]
    if not sentences:
        return ""
    return " ".join(sentences[int(rng.integers(len(sentences)))].split()[:hi])


def pseudo_queries(docs: Sequence[Document], count: int, *, seed: int = 0, kind: str = "sentence",
                   min_words: int = 4, max_words: int = 16, id_prefix: str = "pseudo-") -> QueryFile:
    """Up to ``count`` distinct pseudo-queries from ``docs`` (fewer when the corpus runs out).

    Ids are ``<prefix><doc position>-<draw>``; ``skipped`` counts repeated texts and documents
    too short (or without a title) to give one.
    """
    if kind not in PSEUDO_KINDS:
        raise InvalidInputError(f"pseudo-query kind must be one of {', '.join(PSEUDO_KINDS)}, got {kind!r}")
    if not 1 <= min_words <= max_words:
        raise InvalidInputError(f"pseudo-query lengths need 1 <= min_words <= max_words, got {min_words}..{max_words}")
    if count < 0:
        raise InvalidInputError(f"pseudo-query count must be >= 0, got {count}")
    if not docs:
        raise InvalidInputError("pseudo-queries need documents: the corpus is empty")
    rng = np.random.default_rng([seed, 101])
    seen: set = set()
    out: List[Query] = []
    skipped: Dict[str, int] = {}
    # titles repeat per document, so at most one draw per document; spans/sentences may draw a document again
    attempts = len(docs) if kind == "title" else 4 * count
    order = rng.permutation(len(docs)) if kind == "title" else rng.integers(0, len(docs), size=attempts)
    for draw, position in enumerate(order.tolist()):
        if len(out) >= count:
            break
        doc = docs[position]
        if kind in ("span", "prose"):
            text = _span(doc.text.split(), rng, min_words, max_words)
            if kind == "prose" and text and not _is_prose(text.split()):
                skipped["spans that are not running text"] = skipped.get("spans that are not running text", 0) + 1
                continue
        elif kind == "sentence":
            text = _sentence(doc.text, rng, min_words, max_words)
        else:
            text = " ".join(doc.title.split()[:max_words])
        if len(text.split()) < min_words:
            skipped["documents too short for a pseudo-query"] = skipped.get("documents too short for a pseudo-query", 0) + 1
            continue
        key = normalize_question(text)
        if key in seen:
            skipped["repeated pseudo-queries"] = skipped.get("repeated pseudo-queries", 0) + 1
            continue
        seen.add(key)
        out.append(Query(f"{id_prefix}{position}-{draw}", text))
    return QueryFile(out, f"pseudo-queries ({kind}, {min_words}-{max_words} words, seed {seed})", skipped=skipped)
