"""Reranking a first stage's candidates with an :class:`~elasticdenser.model.ranker.ElasticRanker`.

The one rule for what a reranked list is: the first ``depth`` candidates re-ordered by the
ranker's score (which becomes their score); candidates beyond ``depth`` follow in first-stage
order, scored below every reranked one, so a run scored by ranx ranks exactly as the list reads.

The ranker's score is its logit, or, for a ranker trained with a first-stage weight ``w`` for
that point (:attr:`ElasticRanker.first_stage_weights`, chosen on held-out training lists), the
interpolation ``(1 - w) z(logit) + w z(first-stage score)`` with both standardised over the
list: a ranker that is weak on a corpus keeps what its first stage already got right, and the
first stage's scale (cosine, BM25, reciprocal rank) does not matter.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from elasticdenser.errors import InvalidInputError

__all__ = ["check_depth", "interpolate", "rerank_lists", "reranked"]


def check_depth(depth) -> int:
    """A rerank depth: an integer >= 0 (0 = no reranking)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise InvalidInputError(f"rerank depth must be an integer >= 0, got {depth!r}")
    return int(depth)


def interpolate(logits: Sequence[float], first_scores: Sequence[float], weight: float) -> np.ndarray:
    """``(1 - weight) z(logits) + weight z(first_scores)``, z standardising over the list (the logits
    unchanged when ``weight`` is 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    if not weight:
        return logits

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / (x.std() or 1.0)

    return (1.0 - weight) * z(logits) + weight * z(np.asarray(first_scores, dtype=np.float64))


def rerank_lists(ranker, queries: Sequence[str], passages: Sequence[Sequence[str]], depth: int, point=None,
                 backend: Optional[str] = "auto", batch_size: int = 32,
                 first_scores: Optional[Sequence[Sequence[float]]] = None) -> List[Tuple[List[int], List[float]]]:
    """Per query: the new order (positions into its candidate list) and the scores in that order.

    All (query, passage) pairs of the batch are scored in one call, so a batch of queries costs
    one pass over ``len(queries) x depth`` pairs. ``first_scores`` (the first stage's scores, list
    by list) are interpolated in with the ranker's weight for ``point`` (see the module docstring).
    """
    depth = check_depth(depth)
    pairs = [(q, p) for q, ps in zip(queries, passages) for p in list(ps)[:depth]]
    logits = ranker.score_pairs(pairs, point, batch_size=batch_size, backend=backend) if pairs else np.zeros(0)
    weight = ranker.first_stage_weight(point) if first_scores is not None else 0.0
    out, start = [], 0
    for j, ps in enumerate(passages):
        n = min(depth, len(ps))
        out.append(reranked(logits[start : start + n], list(first_scores[j])[:n] if weight else None, len(ps), weight))
        start += n
    return out


def reranked(logits: Sequence[float], first_scores: Optional[Sequence[float]], size: int,
             weight: float = 0.0) -> Tuple[List[int], List[float]]:
    """One list of ``size`` candidates whose first ``len(logits)`` were scored by the ranker: the new
    order (positions into the list) and the scores in that order (see the module docstring)."""
    n = len(logits)
    top = interpolate(logits, first_scores, weight) if weight and n else np.asarray(logits, dtype=np.float64)
    order = sorted(range(n), key=lambda i: -float(top[i]))
    scores = [float(top[i]) for i in order]
    floor = (min(scores) if scores else 0.0) - 1.0
    return order + list(range(n, size)), scores + [floor - 1e-3 * r for r in range(size - n)]
