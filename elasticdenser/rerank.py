"""Reranking a first stage's candidates with an :class:`~elasticdenser.model.ranker.ElasticRanker`.

The one rule for what a reranked list is: the first ``depth`` candidates re-ordered by the
ranker's logit (which becomes their score); candidates beyond ``depth`` follow in first-stage
order, scored below every reranked one, so a run scored by ranx ranks exactly as the list reads.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from elasticdenser.errors import InvalidInputError

__all__ = ["check_depth", "rerank_lists"]


def check_depth(depth) -> int:
    """A rerank depth: an integer >= 0 (0 = no reranking)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise InvalidInputError(f"rerank depth must be an integer >= 0, got {depth!r}")
    return int(depth)


def rerank_lists(ranker, queries: Sequence[str], passages: Sequence[Sequence[str]], depth: int, point=None,
                 backend: Optional[str] = "auto", batch_size: int = 32) -> List[Tuple[List[int], List[float]]]:
    """Per query: the new order (positions into its candidate list) and the scores in that order.

    All (query, passage) pairs of the batch are scored in one call, so a batch of queries costs
    one pass over ``len(queries) x depth`` pairs.
    """
    depth = check_depth(depth)
    pairs = [(q, p) for q, ps in zip(queries, passages) for p in list(ps)[:depth]]
    logits = ranker.score_pairs(pairs, point, batch_size=batch_size, backend=backend) if pairs else np.zeros(0)
    out, start = [], 0
    for ps in passages:
        n = min(depth, len(ps))
        top = logits[start : start + n]
        start += n
        order = sorted(range(n), key=lambda i: -float(top[i]))
        scores = [float(top[i]) for i in order]
        floor = (min(scores) if scores else 0.0) - 1.0
        rest = list(range(n, len(ps)))
        out.append((order + rest, scores + [floor - 1e-3 * j for j in range(len(rest))]))
    return out
