"""How much of the first stage's score each ranker point keeps (:func:`elasticdenser.rerank.interpolate`).

A cross-encoder trained on little data can rank below a strong first stage it reranks (on
nq-sample the bi-encoder is in domain); mixing the two scores keeps what each gets right. The
weight is chosen per ranker point, since a smaller point is a weaker ranker, on labelled lists
held out of training, by the metric the router and the reports use.
"""
from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

from elasticdenser.rerank import interpolate
from elasticdenser.training.ranker_data import RankerExample

__all__ = ["WEIGHT_GRID", "split_dev_lists", "choose_first_stage_weights"]

WEIGHT_GRID: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def split_dev_lists(examples: Sequence[RankerExample], n: int, seed: int) -> Tuple[List[RankerExample], List[RankerExample]]:
    """``(training lists, dev lists)``: up to ``n`` (at most a fifth) of the lists whose positive the
    first stage retrieved, held out; the rest, in their order, for training."""
    usable = [i for i, ex in enumerate(examples) if {d for d, _ in ex.positives} & {d for d, _ in ex.candidates}]
    picked = set(random.Random(seed).sample(usable, min(n, len(usable) // 5)))
    return [ex for i, ex in enumerate(examples) if i not in picked], [examples[i] for i in sorted(picked)]


def choose_first_stage_weights(ranker, dev: Sequence[RankerExample], points, metric: str = "mrr@10",
                               grid: Sequence[float] = WEIGHT_GRID) -> Dict[str, Dict[str, object]]:
    """Per point name: the weight of ``grid`` with the best ``metric`` over ``dev`` (ties: the smaller
    weight, i.e. more of the ranker), and the metric at every weight."""
    from ranx import Qrels, Run, evaluate

    qrels = Qrels({str(i): {d: 1 for d, _ in ex.positives} for i, ex in enumerate(dev)})
    pairs = [(ex.query, text) for ex in dev for _, text in ex.candidates]
    out: Dict[str, Dict[str, object]] = {}
    for point in points:
        logits, start, lists = ranker.score_pairs(pairs, point), 0, []
        for ex in dev:
            lists.append(logits[start : start + len(ex.candidates)])
            start += len(ex.candidates)
        by_weight = {}
        for w in grid:
            run = {str(i): {d: float(s) for (d, _), s in zip(ex.candidates, interpolate(lg, ex.scores, w))}
                   for i, (ex, lg) in enumerate(zip(dev, lists))}
            by_weight[w] = round(float(evaluate(qrels, Run(run), metric)), 4)
        best = max(grid, key=lambda w: (by_weight[w], -w))
        out[ranker.resolve_point(point).name] = {"weight": best, metric: by_weight[best], "by_weight": by_weight}
    return out
