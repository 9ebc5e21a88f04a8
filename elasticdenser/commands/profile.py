"""`elasticdenser profile`: measure every operating point's cost and quality on this machine."""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from elasticdenser.commands._common import add_backend, add_data_dir, add_out
from elasticdenser.errors import InvalidInputError, StateError
from elasticdenser.serve.profile import DEFAULT_BATCH_SIZES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure latency (batch 1..64) and quality of every operating point; store it in the manifest",
        description=(
            "Measures, on this machine, query encoding + search latency (median, p90) of every operating point "
            "at each batch size, and its quality on a validation query set (nDCG@k, MRR@k, Recall@k with qrels; answer-match "
            "accuracy@k with answer strings). Marks points off the Pareto frontier. Writes the table under "
            "'profile' in EXP_DIR/manifest.json (atomic replace); the router uses only these numbers."
        ),
    )
    p.add_argument("exp_dir", help="experiment directory (manifest.json, model/, index-d*.faiss)")
    p.add_argument("--collection", help="validation queries (default: the experiment's collection)")
    add_data_dir(p)
    p.add_argument("--max-queries", type=int, default=300, help="validation queries sampled (seeded; default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10, help="quality at k (default 10)")
    p.add_argument("--metric", help="router quality metric: ndcg@10, mrr@10, recall@10 or accuracy@10 (default: ndcg if qrels)")
    p.add_argument("--points", help="comma-separated points (default: all the experiment serves)")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (default 5, plus 1 warm-up)")
    p.add_argument("--threads", type=int, help="torch intra-op threads while measuring (default: torch's)")
    add_backend(p, "auto", "query encoder path to measure (default auto: ONNX Runtime, else TorchScript; int8: opt-in "
                        "quantised ONNX, see BENCHMARKS.md); recorded so that `serve` runs the same one")
    add_out(p, "also write the profile JSON to this file (it is always stored in EXP/manifest.json)")
    p.add_argument("--ranker", help="an ElasticRanker directory: also profile every query point x ranker point x "
                   "rerank depth, so the router chooses both stages (serve with the same --ranker)")
    p.add_argument("--rerank-depths", default="10,20", help="with --ranker: rerank depths to profile (default 10,20)")
    p.add_argument("--ranker-points", help="with --ranker: comma-separated ranker points (default: its defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elasticdenser.atomic import write_json
    from elasticdenser.data import load_collection
    from elasticdenser.operating_point import parse_points
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.measure import measure_profile
    from elasticdenser.serve.profile import save_profile

    if args.max_queries < 1 or args.repeats < 1 or args.k < 1:
        raise InvalidInputError("--max-queries, --repeats and --k must be >= 1")
    try:
        batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        raise InvalidInputError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if not batch_sizes or batch_sizes[0] < 1:
        raise InvalidInputError("--batch-sizes needs positive integers")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    manifest = Path(args.exp_dir) / "manifest.json"
    for target in (Path(args.exp_dir), manifest):  # minutes of measuring must not end in a write error
        if target.exists() and not os.access(target, os.W_OK):
            raise StateError(f"{target} is not writable: the profile is stored in {manifest}")
    try:
        depths = [int(d) for d in args.rerank_depths.split(",") if d.strip()]
    except ValueError:
        raise InvalidInputError(f"--rerank-depths must be comma-separated integers, got {args.rerank_depths!r}") from None
    searcher = Searcher.open(args.exp_dir, backend=args.backend, ranker=args.ranker)
    name = args.collection or searcher.manifest.get("collection", {}).get("name")
    if not name:
        raise InvalidInputError("the manifest names no collection; pass --collection")
    coll = load_collection(name, args.data_dir)
    queries = list(coll.queries)
    random.Random(args.seed).shuffle(queries)
    queries = queries[: args.max_queries]
    points = parse_points(args.points) if args.points else None

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    prof = measure_profile(searcher, queries, coll.qrels, k=args.k, metric=args.metric, points=points,
                           batch_sizes=batch_sizes, repeats=args.repeats, space=searcher.encoder.space, log=log)
    if args.ranker:
        from elasticdenser.serve.measure_ranker import add_ranker_profile

        prof = add_ranker_profile(prof, searcher, queries, coll.qrels, depths=depths, repeats=min(args.repeats, 2),
                                  ranker_points=args.ranker_points.split(",") if args.ranker_points else None, log=log)
    path = save_profile(args.exp_dir, prof)
    if args.out:
        write_json(args.out, prof.to_json())
    print(f"profile of {len(prof.points)} points written to {path} (metric {prof.metric})")
    width = max(len(n) for n in prof.points)
    print(f"{'point':<{width}} {'b=1 med':>8} {'b=1 p90':>8} {'b=64 med':>9} {prof.metric:>12}  pareto")
    for p in sorted(prof.points.values(), key=lambda x: -x.cost()):
        b1, bl = p.latency_ms[min(p.latency_ms)], p.latency_ms[max(p.latency_ms)]
        print(f"{p.name:<{width}} {b1['median']:8.1f} {b1['p90']:8.1f} {bl['median']:9.1f} "
              f"{p.quality[prof.metric]:12.4f}  {'yes' if p.pareto else 'no (not routed to)'}")
    return 0
