"""Profiling the two-stage configurations: every query point with every ranker point at every
rerank depth, measured on this machine, added to the profile as joint entries.

A joint entry ``<query point>+<ranker point>@<depth>`` (:class:`ServingConfig`) costs the query
point's measured batch time plus the measured time of reranking ``batch x depth`` pairs at that
ranker point, and its quality is measured end to end: the query point's candidates on the
validation queries, reranked, scored like every other entry (:func:`quality_of_hits`). Rerank
time is measured at small batches and extrapolated linearly (it is linear in the pairs scored);
logits are computed once per (query, passage, ranker point) and shared by every query point and
depth that reranks that pair. The router then treats joint entries like points: its ladder is
the Pareto front over all of them, "no rerank" included.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import ServingConfig
from elasticdenser.rerank import reranked
from elasticdenser.serve.measure import measure_latency, quality_of_hits
from elasticdenser.serve.profile import PointProfile, Profile, mark_pareto

__all__ = ["RERANK_BATCH_SIZES", "add_ranker_profile"]

#: batch sizes at which reranking is timed (larger ones are extrapolated: the cost is linear in pairs)
RERANK_BATCH_SIZES = (1, 2, 4, 8)


def add_ranker_profile(profile: Profile, searcher: Any, queries: Sequence[Any], qrels: Optional[Dict] = None, *,
                       depths: Sequence[int] = (10, 20), ranker_points: Optional[Sequence[Any]] = None,
                       repeats: int = 2, log: Callable[[str], None] = lambda msg: None) -> Profile:
    """Measure the joint configurations of ``searcher`` (which has a ranker attached) and add them
    to ``profile`` (whose query points must be measured already); marks the Pareto front again."""
    ranker = getattr(searcher, "ranker", None)
    if ranker is None:
        raise InvalidInputError("profiling the reranking stage needs a ranker (Searcher.open(..., ranker=DIR))")
    depths = sorted({int(d) for d in depths})
    if not depths or depths[0] < 1:
        raise InvalidInputError(f"rerank depths must be >= 1, got {depths}")
    points = [ranker.resolve_point(p) for p in (ranker_points or ranker.default_points())]
    texts = [q.text for q in queries]
    base = [p for p in profile.points.values() if p.config.ranker is None]
    backend = getattr(searcher, "backend", "auto")
    candidates = {p.name: searcher.search_texts(texts, max(profile.k, depths[-1]), p.point) for p in base}
    logits: Dict[Any, Dict[tuple, float]] = {}
    todo = sorted({(i, h.doc_id, h.contents) for hits in candidates.values() for i, hs in enumerate(hits)
                   for h in hs[: depths[-1]]})
    for rp in points:
        log(f"profiling ranker {rp.name}: scoring the candidates of {len(base)} query points")
        scores = ranker.score_pairs([(texts[i], text) for i, _, text in todo], rp, backend=backend)
        logits[rp] = {(i, d): float(s) for (i, d, _), s in zip(todo, scores)}
    # one batch of ``b`` queries reranked at depth ``n``: ``b x n`` pairs from real candidates
    pool = [h.contents for hs in next(iter(candidates.values())) for h in hs[: depths[-1]]]
    for rp in points:
        for n in depths:
            log(f"profiling ranker {rp.name}: rerank latency at depth {n}")
            pairs_of = {b: [(texts[j % len(texts)], pool[(j * n + t) % len(pool)]) for j in range(b) for t in range(n)]
                        for b in RERANK_BATCH_SIZES}
            rerank = PointProfile(f"{base[0].name}+{rp.name}@{n}", measure_latency(
                lambda batch, k, p, pairs_of=pairs_of: ranker.score_pairs(pairs_of[len(batch)], p, backend=backend), rp,
                texts, n, RERANK_BATCH_SIZES, repeats), {})
            weight = ranker.first_stage_weight(rp)
            for qp in base:
                lists = [[hs[j] for j in reranked([logits[rp][(i, h.doc_id)] for h in hs[:n]],
                                                  [h.score for h in hs[:n]], len(hs), weight)[0]]
                         for i, hs in enumerate(candidates[qp.name])]
                name = ServingConfig(qp.point, rp, n).name
                latency = {b: {s: qp.service_ms(b, s) + rerank.service_ms(b, s) for s in ("median", "p90")}
                           for b in qp.batch_sizes}
                profile.points[name] = PointProfile(name, latency, quality_of_hits(lists, queries, qrels, profile.k))
    for entry in profile.points.values():
        if profile.metric not in entry.quality:
            raise InvalidInputError(f"{entry.name}: no {profile.metric} on these queries")
    mark_pareto(profile.points.values(), profile.metric)
    profile.extra["ranker_fingerprint"] = ranker.fingerprint()
    profile.extra["rerank_depths"] = depths
    return profile
