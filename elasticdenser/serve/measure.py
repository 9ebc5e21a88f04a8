"""Measuring a profile on this machine: the latency of every point per batch size (median and p90
of real ``search_texts`` calls) and its quality on validation questions, scored by the evaluation's
own rules (Recall@k from qrels, DPR answer matching on passage text).
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from elasticdenser.errors import InvalidInputError
from elasticdenser.eval.answers import has_answer
from elasticdenser.operating_point import OperatingPoint
from elasticdenser.serve.profile import DEFAULT_BATCH_SIZES, PointProfile, Profile, mark_pareto

__all__ = ["measure_latency", "measure_profile", "quality_of_hits", "machine_info", "encoder_backend",
           "small_batch_threads", "pin_small_batch_threads"]


def _quantile(values: Sequence[float], q: float) -> float:
    vals = sorted(values)
    if len(vals) == 1:
        return vals[0]
    pos = q * (len(vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    import sys

    torch = sys.modules.get("torch")  # report torch only if the searcher loaded it (importing it is slow)
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def quality_of_hits(
    hits: Sequence[Sequence[Any]],
    queries: Sequence[Any],
    qrels: Optional[Mapping[str, Mapping[str, int]]],
    k: int,
) -> Dict[str, float]:
    """nDCG@k, MRR@k and Recall@k (ranx, when qrels judge the queries) and answer-match accuracy@k
    (when answers exist).

    ``hits[i]`` are the ranked ``Hit``s of ``queries[i]`` (objects with ``doc_id``, ``score`` and
    ``text``); ``queries[i]`` has ``query_id`` and ``answers``. Metrics come from the same owners as
    ``elasticdenser evaluate``: ranx for the ranked ones, DPR's answer rule
    (:func:`elasticdenser.eval.answers.has_answer`) for accuracy. nDCG is the router's default
    because recall@k saturates on easy collections: ties would mark the full point as dominated.
    """
    out: Dict[str, float] = {}
    judged = {q.query_id: {d: g for d, g in qrels.get(q.query_id, {}).items() if g > 0} for q in queries} if qrels else {}
    judged = {q: rel for q, rel in judged.items() if rel}
    if judged:
        from elasticdenser.eval.metrics import evaluate

        # rank by position, not by score (a score tie must not reorder hits): scores k, k-1, ...
        run = {q.query_id: {h.doc_id: float(k - i) for i, h in enumerate(list(hs)[:k])}
               for q, hs in zip(queries, hits) if q.query_id in judged and len(hs)}
        names = [f"ndcg@{k}", f"mrr@{k}", f"recall@{k}"]  # a judged query with no hits scores 0 (ranx)
        out.update(evaluate(judged, run, names) if run else dict.fromkeys(names, 0.0))
    answered = [(q, hs) for q, hs in zip(queries, hits) if getattr(q, "answers", None)]
    if answered:
        out[f"accuracy@{k}"] = statistics.fmean(
            float(any(has_answer(q.answers, h.text) for h in list(hs)[:k]))
            for q, hs in answered
        )
    return out


def measure_latency(
    search_texts: Callable[[List[str], int, Any], Any],
    point: Any,
    texts: Sequence[str],
    k: int,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> Dict[int, Dict[str, float]]:
    """Median and p90 wall time (ms) of ``search_texts(batch, k, point)`` per batch size.

    Each repeat uses a different slice of ``texts`` (cycled), so caches do not flatter the numbers.
    """
    if not texts:
        raise InvalidInputError("latency measurement needs at least one query text")
    out: Dict[int, Dict[str, float]] = {}
    offset = 0
    for b in batch_sizes:
        times = []
        for r in range(warmup + repeats):
            batch = [texts[(offset + i) % len(texts)] for i in range(b)]
            offset += b
            t0 = clock()
            search_texts(batch, k, point)
            dt = (clock() - t0) * 1000.0
            if r >= warmup:
                times.append(dt)
        out[int(b)] = {"median": statistics.median(times), "p90": _quantile(times, 0.9)}
    return out


def encoder_backend(searcher: Any) -> Optional[str]:
    """The query path ``searcher`` runs, resolved (the server must run the one the profile measured)."""
    name = getattr(searcher, "backend", None)
    if name is None:
        return None
    from elasticdenser.model.fastpath import resolve_backend

    return resolve_backend(name)


def _runners(searcher: Any, names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Each named point's fast-path runner, as ``searcher`` runs it; None on the eager path."""
    backend, encoder = encoder_backend(searcher), getattr(searcher, "encoder", None)
    if backend in (None, "eager") or encoder is None:
        return None
    from elasticdenser.model.fastpath import get_runner

    return {n: get_runner(encoder, OperatingPoint.parse(n), backend) for n in names}


def small_batch_threads(searcher: Any, names: Sequence[str]) -> Optional[Dict[str, int]]:
    """``{point: threads}`` a batch of one query runs on here (each runner measures it on first use)."""
    runners = _runners(searcher, names)
    return None if runners is None else {n: r.threads_for(1) for n, r in runners.items()}


def pin_small_batch_threads(searcher: Any, profile: Profile) -> None:
    """Small batches run on the threads the profile's process measured, if it ran this many torch
    threads: its batch-1 times then describe this process (measuring again, a noisy host could pick
    the other count for a point whose gain from more threads is near the margin)."""
    import sys

    pinned, torch = profile.extra.get("small_batch_threads"), sys.modules.get("torch")
    if not pinned or torch is None or profile.machine.get("torch_threads") != torch.get_num_threads():
        return
    served = {str(p) for p in getattr(searcher, "points", ())}
    for name, runner in (_runners(searcher, [n for n in pinned if n in served]) or {}).items():
        runner.pin_small_batch_threads(int(pinned[name]))


def measure_profile(
    searcher: Any,
    queries: Sequence[Any],
    qrels: Optional[Mapping[str, Mapping[str, int]]] = None,
    *,
    k: int = 10,
    metric: Optional[str] = None,
    points: Optional[Sequence[Union[str, OperatingPoint]]] = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 5,
    space: Any = None,
    seq_len: int = 32,
    log: Callable[[str], None] = lambda msg: None,
) -> Profile:
    """Measure every operating point of ``searcher`` on this machine.

    ``searcher`` needs ``points`` and ``search_texts(texts, k, point) -> list[list[Hit]]``.
    Quality is computed from the same searcher's hits on ``queries`` (nDCG@k, MRR@k, Recall@k with
    ``qrels``; answer-match accuracy@k with answers); ``metric`` picks which one the router uses
    (default nDCG@k, else accuracy@k).
    """
    names = [str(p) for p in (points or searcher.points)]
    if not names:
        raise InvalidInputError("no operating points to profile")
    texts = [q.text for q in queries]
    if not texts:
        raise InvalidInputError("profiling needs a validation query set with at least one query")
    if space is None:
        encoder = getattr(searcher, "encoder", None)
        space = getattr(encoder, "space", None)
    table: Dict[str, PointProfile] = {}
    for name in names:
        point = OperatingPoint.parse(name)
        log(f"profiling {name}: quality on {len(texts)} queries")
        hits: List[Any] = []
        for i in range(0, len(texts), 64):
            hits.extend(searcher.search_texts(texts[i : i + 64], k, point))
        quality = quality_of_hits(hits, queries, qrels, k)
        if not quality:
            raise InvalidInputError("validation queries have neither qrels nor answer strings; cannot measure quality")
        log(f"profiling {name}: latency at batch sizes {list(batch_sizes)}")
        latency = measure_latency(searcher.search_texts, point, texts, k, batch_sizes, repeats)
        flops = params = None
        if space is not None:
            flops = space.flops(point, seq_len)
            encoder = getattr(searcher, "encoder", None)
            params = float(encoder.point_params(point) if hasattr(encoder, "point_params") else space.params(point))
        table[name] = PointProfile(name, latency, quality, params=params, flops=flops)
    available = set.intersection(*(set(p.quality) for p in table.values()))
    if metric is None:
        metric = f"ndcg@{k}" if f"ndcg@{k}" in available else f"accuracy@{k}"
    if metric not in available:
        raise InvalidInputError(f"metric {metric!r} not measurable on this query set; available: {sorted(available)}")
    mark_pareto(table.values(), metric)
    return Profile(
        points=table,
        metric=metric,
        k=k,
        batch_sizes=[int(b) for b in batch_sizes],
        machine=machine_info(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"num_queries": len(texts), "repeats": repeats, "seq_len_for_flops": seq_len,
               "encoder_backend": encoder_backend(searcher),
               "small_batch_threads": small_batch_threads(searcher, names),
               # the profile describes this model only: a router must not use it for another
               **({"model_fingerprint": searcher.encoder.fingerprint()}
                  if hasattr(getattr(searcher, "encoder", None), "fingerprint") else {})},
    )
