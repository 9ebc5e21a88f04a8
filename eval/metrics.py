"""IR metrics and statistical comparison, all computed by ranx."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

__all__ = ["DEFAULT_METRICS", "make_qrels", "make_run", "evaluate", "compare"]

DEFAULT_METRICS = ["ndcg@10", "recall@20", "recall@100", "mrr@10", "map"]


def make_qrels(qrels: Mapping[str, Mapping[str, int]]):
    import ranx

    return ranx.Qrels.from_dict({str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()})


def make_run(results: Mapping[str, Mapping[str, float]], name: Optional[str] = None):
    import ranx

    run = ranx.Run.from_dict({str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in results.items()})
    if name:
        run.name = name
    return run


def evaluate(qrels, run, metrics: Sequence[str] = DEFAULT_METRICS) -> Dict[str, float]:
    import ranx

    if isinstance(qrels, Mapping):
        qrels = make_qrels(qrels)
    if isinstance(run, Mapping):
        run = make_run(run)
    # make_comparable: judged queries missing from the run score 0, unjudged run queries are ignored
    res = ranx.evaluate(qrels, run, list(metrics), make_comparable=True)
    if isinstance(res, float):
        res = {metrics[0]: res}
    return {k: float(v) for k, v in res.items()}


def compare(qrels, runs: Sequence, metrics: Sequence[str] = ("ndcg@10", "mrr@10"), stat_test: str = "student",
            max_p: float = 0.01):
    """ranx's comparison report (paired significance tests between every pair of runs)."""
    import ranx

    if isinstance(qrels, Mapping):
        qrels = make_qrels(qrels)
    return ranx.compare(qrels=qrels, runs=list(runs), metrics=list(metrics), stat_test=stat_test, max_p=max_p,
                        make_comparable=True)
