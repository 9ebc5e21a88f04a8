"""``elasticdenser search``: batch retrieval of a query set at one operating point (optionally BM25 or fused,
and reranked) -> TREC run file."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from elasticdenser.commands._common import add_backend, add_data_dir, add_device, add_out
from elasticdenser.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="batch-search a query set at one operating point, write a TREC run file")
    p.add_argument("exp_dir", help="experiment directory (from `elasticdenser index` or `pipeline`)")
    p.add_argument("--queries", required=True,
                   help="query file (.tsv 'qid<TAB>text' or .jsonl) or a collection name (its evaluation queries)")
    add_data_dir(p)
    p.add_argument("--point", default=None, help="operating point, e.g. L3-H6-F768-D192 (default: full model)")
    p.add_argument("-k", "--k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    add_out(p, "TREC run file (default: EXP/runs/<point>.trec)")
    p.add_argument("--skip-empty", action="store_true", help="drop empty queries instead of failing")
    p.add_argument("--allow-model-mismatch", action="store_true")
    add_device(p)
    add_backend(p, "auto")
    p.add_argument("--model", default=None, help="search with this encoder instead of EXP/model")
    p.add_argument("--first-stage", choices=["dense", "bm25", "fusion"], default="dense",
                   help="dense (the point), BM25 (`index --bm25`), or their fusion (--fusion rrf|score)")
    p.add_argument("--fusion", choices=["rrf", "score"], default="rrf")
    p.add_argument("--ranker", default=None, help="an ElasticRanker directory: rerank the top --rerank hits")
    p.add_argument("--rerank", type=int, default=20, help="with --ranker: rerank depth (default 20)")
    p.add_argument("--ranker-point", default=None, help="with --ranker: the ranker's point (default: full)")
    p.set_defaults(func=run)


def load_queries(spec: str, data_dir=None):
    if Path(spec).is_file():
        from elasticdenser.eval.runs import read_queries

        return read_queries(spec)
    from elasticdenser.data import load_collection

    return load_collection(spec, data_dir).queries


def run(args: argparse.Namespace) -> int:
    import warnings

    from elasticdenser.commands._common import load_encoder, pick_device
    from elasticdenser.eval.runs import write_trec_run
    from elasticdenser.searcher import Searcher

    encoder = load_encoder(args.model, args.device) if args.model else None
    searcher = Searcher.open(args.exp_dir, allow_mismatch=args.allow_model_mismatch, device=pick_device(args.device),
                             encoder=encoder, ranker=args.ranker, backend=args.backend)
    queries = load_queries(args.queries, args.data_dir)
    point = searcher.resolve_point(args.point)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation is summarised below
        run_ = searcher.batch_search(queries, k=args.k, point=point, batch_size=args.batch_size, skip_empty=args.skip_empty,
                                     rerank=args.rerank if args.ranker else 0, ranker_point=args.ranker_point,
                                     first_stage=args.first_stage, fusion=args.fusion)
    dt = time.perf_counter() - t0
    if run_ is None:
        raise InvalidInputError("no non-empty queries to search")
    out = Path(args.out) if args.out else Path(args.exp_dir) / "runs" / f"{run_.name}.trec"
    write_trec_run(run_, out)
    msg = f"{len(run_)} queries at {run_.name} in {dt:.2f}s ({len(run_) / dt:.0f} q/s) -> {out}"
    if searcher.truncated_queries:
        msg += f"; {searcher.truncated_queries} over-long queries truncated to {searcher.encoder.max_length} tokens"
    print(msg)
    return 0
