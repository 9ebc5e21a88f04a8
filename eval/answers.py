"""DPR-style answer-match top-k accuracy.

``has_answer`` follows DPR's ``has_answer`` (``dpr/data/qa_validation.py``, match type
``string``): Unicode NFD-normalise, tokenise with DPR's ``SimpleTokenizer`` (runs of letters,
digits and marks, or single non-space, non-control characters), lower-case, and look for the
answer's token sequence inside the passage's. The passage text is matched WITHOUT its title, as
DPR does. Differences from DPR: none in the matching; answers that tokenise to nothing never match
(DPR would count an empty answer as a match at every position; no real answer set has one).
"""
from __future__ import annotations

import unicodedata
from typing import Dict, Iterable, List, Mapping, Sequence

import regex

__all__ = ["tokens", "has_answer", "first_hit_ranks", "topk_accuracy"]

_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def tokens(text: str) -> List[str]:
    """DPR SimpleTokenizer words, uncased, after NFD normalisation."""
    text = unicodedata.normalize("NFD", text)
    return [m.group().lower() for m in _TOKEN.finditer(text)]


def _contains(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    for i in range(len(hay) - n + 1):
        if hay[i] == first and list(hay[i : i + n]) == list(needle):
            return True
    return False


def has_answer(answers: Iterable[str], text: str) -> bool:
    hay = tokens(text)
    return any(_contains(hay, tokens(a)) for a in answers)


def first_hit_ranks(ranked_texts: Mapping[str, Sequence[str]], answers: Mapping[str, Sequence[str]]) -> Dict[str, int]:
    """``{query_id: 1-based rank of the first passage with an answer, or 0 if none}``."""
    out = {}
    for qid, texts in ranked_texts.items():
        ans = answers.get(qid) or ()
        out[qid] = next((r for r, t in enumerate(texts, 1) if has_answer(ans, t)), 0)
    return out


def topk_accuracy(first_ranks: Mapping[str, int], ks: Sequence[int] = (1, 5, 20, 100)) -> Dict[str, float]:
    """``{"answer@k": fraction of questions with an answer-bearing passage in the top k}``."""
    n = len(first_ranks)
    if n == 0:
        return {f"answer@{k}": float("nan") for k in ks}
    return {f"answer@{k}": sum(1 for r in first_ranks.values() if 0 < r <= k) / n for k in ks}
