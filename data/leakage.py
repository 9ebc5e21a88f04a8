"""Leakage guard: training pools must not contain the questions we evaluate on.

Why a guard and not a convention: the same question often reaches us from several files
(NQ-open dev *is* DPR's NQ test, in another order and with DPR's tokenisation, e.g.
``do n't`` vs ``don't``). Comparing raw strings would miss those, so questions are compared
after :func:`normalize_question`, which keeps only lower-cased letters and digits.
"""
from __future__ import annotations

import logging
import unicodedata
from typing import Dict, Iterable, List, Sequence, Tuple, Union

from elasticdenser.data.types import Collection, Query
from elasticdenser.errors import InvalidInputError

__all__ = ["LeakageError", "normalize_question", "evaluation_keys", "check_leakage"]

log = logging.getLogger(__name__)


class LeakageError(InvalidInputError):
    """A training pool contains evaluation questions (compared after normalisation)."""


def normalize_question(text: str) -> str:
    """Canonical form of a question for overlap checks.

    NFKD-decomposes, drops accents, lower-cases and keeps only alphanumeric characters, so
    punctuation, whitespace and tokenisation differences (``won't`` / ``wo n't``, trailing
    ``?``) do not hide a duplicate. Two different questions practically never collide.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed.lower() if ch.isalnum())


def evaluation_keys(collections: Iterable[Collection]) -> Dict[str, str]:
    """Map normalised evaluation question -> name of the (first) collection that holds it."""
    keys: Dict[str, str] = {}
    for collection in collections:
        for text in collection.evaluation_questions():
            keys.setdefault(normalize_question(text), collection.name)
    return keys


def check_leakage(
    pool: Sequence[Query],
    protected: Union[Dict[str, str], Iterable[Collection]],
    *,
    drop_overlap: bool = False,
    pool_name: str = "training pool",
) -> Tuple[List[Query], List[Tuple[Query, str]]]:
    """Split ``pool`` into (kept, dropped) against the protected evaluation questions.

    Raises :class:`LeakageError` on any overlap unless ``drop_overlap`` is set, in which case
    the overlapping questions are removed, returned as ``dropped`` with the collection they
    collide with, and the count is logged: dropping is explicit and reported, never silent.
    """
    keys = protected if isinstance(protected, dict) else evaluation_keys(protected)
    kept: List[Query] = []
    dropped: List[Tuple[Query, str]] = []
    for query in pool:
        owner = keys.get(normalize_question(query.text))
        if owner is None:
            kept.append(query)
        else:
            dropped.append((query, owner))
    if dropped and not drop_overlap:
        examples = "; ".join(f"{q.query_id}: {q.text!r} (in {owner})" for q, owner in dropped[:5])
        raise LeakageError(
            f"{pool_name}: {len(dropped)} question(s) are evaluation questions of "
            f"{sorted({o for _, o in dropped})}, e.g. {examples}. Remove them from training, or pass "
            "drop_overlap=True to drop them (the count is reported)."
        )
    if dropped:
        log.warning("%s: dropped %d question(s) that are evaluation questions of %s",
                    pool_name, len(dropped), sorted({o for _, o in dropped}))
    return kept, dropped
