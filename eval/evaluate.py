"""Evaluate operating points of a Searcher on a collection: ranx metrics, answer-match accuracy,
batch latency; and ranx's paired significance comparison between the points."""
from __future__ import annotations

import statistics
import time
from typing import Dict, List, Sequence, Tuple

from elasticdenser.eval import answers as ans
from elasticdenser.eval.metrics import DEFAULT_METRICS, compare, evaluate

__all__ = ["ANSWER_KS", "answer_accuracy", "evaluate_points", "compare_points"]

ANSWER_KS = (1, 5, 20, 100)


class _PassageTokens:
    """Tokenised passage text (without title) per corpus row, computed once per row."""

    def __init__(self, searcher):
        self.searcher = searcher
        self.cache: Dict[int, Tuple[str, ...]] = {}

    def __call__(self, row: int) -> Tuple[str, ...]:
        toks = self.cache.get(row)
        if toks is None:
            toks = self.cache[row] = tuple(ans.tokens(self.searcher.passage(row).text))
        return toks


def answer_accuracy(ranked_rows: Dict[str, List[int]], answers: Dict[str, Sequence[str]], passage_tokens,
                    ks: Sequence[int] = ANSWER_KS) -> Dict[str, float]:
    first = {}
    for qid, rows in ranked_rows.items():
        needles = [t for t in (ans.tokens(a) for a in answers.get(qid, ())) if t]
        first[qid] = next((r for r, row in enumerate(rows[: max(ks)], 1)
                           if any(ans._contains(passage_tokens(row), n) for n in needles)), 0)
    return ans.topk_accuracy(first, ks)


def evaluate_points(searcher, collection, points: Sequence, k: int = 100, batch_size: int = 32,
                    metrics: Sequence[str] = DEFAULT_METRICS, answer_ks: Sequence[int] = ANSWER_KS,
                    progress=None, rerank: int = 0, ranker_points: Sequence = (), first_stage: str = "dense",
                    fusion: str = "rrf") -> Tuple[List[dict], Dict[str, object]]:
    """One row per point: ``point``, ``params_m``, ``latency_ms`` (median per batch of ``batch_size``
    queries, encode + search), ``qps``, ranx ``metrics`` (if the collection has qrels) and
    ``answer@k`` (if its queries have answers). With ``rerank=N``, one more row per point and
    ranker point (the searcher's attached ranker reranking the top N; ``latency_ms`` then includes
    reranking). ``first_stage``/``fusion`` as for ``Searcher.batch_search`` (BM25 alone: one row,
    whatever the points). Returns ``(rows, {run name: ranx.Run})``."""
    queries = [q for q in collection.queries if q.text.strip()]
    with_answers = {q.query_id: q.answers for q in queries if q.answers}
    # judged queries that are evaluated (all of them unless the caller cut the query list)
    asked = {q.query_id for q in collection.queries}
    qrels = {qid: docs for qid, docs in (collection.qrels or {}).items() if qid in asked}
    tokens = _PassageTokens(searcher)
    rows, runs = [], {}
    for point in points[:1] if first_stage == "bm25" else points:
        p = searcher.resolve_point(point)
        searcher.index(p.width)  # load outside the timed region
        searcher.encode([q.text for q in queries[:batch_size]], p)  # warm-up
        for rp in [None, *(ranker_points if rerank else ())]:
            timings: List[float] = []
            t0 = time.perf_counter()
            run, ranked = searcher.batch_search(queries, k=k, point=p, batch_size=batch_size, timings=timings,
                                                return_rows=True, rerank=rerank if rp is not None else 0, ranker_point=rp,
                                                first_stage=first_stage, fusion=fusion)
            total = time.perf_counter() - t0
            full = timings[:-1] if len(timings) > 1 and len(queries) % batch_size else timings
            row = {
                "point": run.name if run is not None else p.name,
                "params_m": round(searcher.encoder.point_params(p) / 1e6, 2),
                # reranking runs after the whole first stage: its share is spread over the batches
                "latency_ms": round(1000 * (statistics.median(full) if rp is None else total / max(1, len(timings))), 2),
                "qps": round(len(queries) / total, 1),
                "queries": len(queries),
            }
            if qrels:
                row.update({m: round(v, 4) for m, v in evaluate(qrels, run, metrics).items()})
            if with_answers:
                acc = answer_accuracy({q: ranked[q] for q in with_answers}, with_answers, tokens, answer_ks)
                row.update({m: round(v, 4) for m, v in acc.items()})
            rows.append(row)
            runs[row["point"]] = run
            if progress:
                progress(row)
    return rows, runs


def compare_points(collection, runs: Dict[str, object], metrics=("ndcg@10", "mrr@10"), stat_test: str = "student"):
    """ranx.compare report over the points' runs (None without qrels or with < 2 runs)."""
    asked = {q.query_id for q in collection.queries}
    qrels = {qid: docs for qid, docs in (collection.qrels or {}).items() if qid in asked}
    if not qrels or len(runs) < 2:
        return None
    return compare(qrels, list(runs.values()), metrics=metrics, stat_test=stat_test)
