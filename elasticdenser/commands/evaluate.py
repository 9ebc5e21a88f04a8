"""``elasticdenser evaluate``: metrics table for a list of operating points + ranx comparison."""
from __future__ import annotations

import argparse
from pathlib import Path

from elasticdenser.commands._common import add_backend, add_data_dir, add_device, add_out
from elasticdenser.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate operating points of an experiment on a collection (ranx + answer match)")
    p.add_argument("exp_dir")
    p.add_argument("collection", help="collection whose queries/qrels/answers to evaluate (normally the indexed one)")
    add_data_dir(p)
    p.add_argument("--points", default="default", help="comma-separated points, 'full', or 'default'")
    p.add_argument("-k", "--k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    add_out(p, "folder for metrics.json/.md (default: EXP); an existing report is kept and the new one numbered")
    p.add_argument("--save-runs", action="store_true",
                   help="also write each row's ranking as a TREC run file, in a folder named after the report "
                        "(metrics-runs/<point>.trec): per-query analysis with ranx or trec_eval")
    p.add_argument("--stat-test", default="student", choices=["student", "fisher", "tukey"])
    p.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    p.add_argument("--allow-model-mismatch", action="store_true")
    p.add_argument("--ranker", default=None, help="an ElasticRanker directory: adds reranked rows (see --rerank)")
    p.add_argument("--rerank", type=int, default=20, help="with --ranker: rerank each point's top N (default 20)")
    p.add_argument("--ranker-points", default="default", help="with --ranker: ranker points, 'full' or 'default'")
    p.add_argument("--first-stage", choices=["dense", "bm25", "fusion"], default="dense",
                   help="candidates from the dense points (default), BM25 (`index --bm25`), or their fusion")
    p.add_argument("--fusion", choices=["rrf", "score"], default="rrf", help="with --first-stage fusion")
    add_device(p)
    add_backend(p, "auto")
    p.set_defaults(func=run)


def check_judgments_match(coll, searcher) -> None:
    """Refuse a collection whose judgments name none of the indexed documents: every metric would
    read 0.0000, which looks like a result. A partial overlap is reported, not refused."""
    judged = {d for docs in coll.qrels.values() for d in docs}
    if not judged:
        return
    found = sum(1 for d in searcher.doc_ids if d in judged)
    index_name = searcher.manifest.get("collection", {}).get("name")
    if found == 0:
        raise InvalidInputError(f"the qrels of {coll.name} name none of the {len(searcher.doc_ids)} documents indexed in "
                                f"{searcher.exp_dir} ({index_name}): evaluate it against an index of its own corpus")
    if found < len(judged):
        print(f"note: {len(judged) - found} of {len(judged)} judged documents of {coll.name} are not in the index")


def run(args: argparse.Namespace) -> int:
    from elasticdenser.commands._common import pick_device, resolve_points
    from elasticdenser.data import load_collection
    from elasticdenser.eval.evaluate import compare_points, evaluate_points
    from elasticdenser.eval.report import RUNS_SUFFIX, markdown_table, save_report
    from elasticdenser.searcher import Searcher

    searcher = Searcher.open(args.exp_dir, allow_mismatch=args.allow_model_mismatch, device=pick_device(args.device),
                             backend=args.backend)
    coll = load_collection(args.collection, args.data_dir)
    if coll.name != searcher.manifest.get("collection", {}).get("name"):
        print(f"note: evaluating {coll.name} queries against the {searcher.manifest['collection']['name']} index")
    if args.max_queries:
        coll.queries = coll.queries[: args.max_queries]
    check_judgments_match(coll, searcher)
    points = resolve_points(args.points, searcher.encoder, searcher.points)
    ranker_points = []
    if args.ranker:
        if args.rerank < 1:
            raise InvalidInputError(f"--rerank must be >= 1 with --ranker, got {args.rerank}")
        searcher.attach_ranker(args.ranker)
        ranker = searcher.ranker
        ranker_points = [ranker.resolve_point(rp) for rp in
                         resolve_points(args.ranker_points, ranker.encoder, ranker.default_points())]
    rows, runs = evaluate_points(searcher, coll, points, k=args.k, batch_size=args.batch_size,
                                 rerank=args.rerank if args.ranker else 0, ranker_points=ranker_points,
                                 first_stage=args.first_stage, fusion=args.fusion)
    print(markdown_table(rows))
    cmp_ = compare_points(coll, runs, stat_test=args.stat_test)
    if cmp_ is not None:
        print(cmp_)
    paths = save_report(Path(args.out or args.exp_dir), rows, {"collection": coll.name, "k": args.k,
                        "batch_size": args.batch_size,
                        "first_stage": args.first_stage,
                        **({"ranker": str(args.ranker), "rerank": args.rerank} if args.ranker else {})}, cmp_)
    print(f"saved {paths['json']} and {paths['md']}")
    if args.save_runs:  # next to the report it belongs to, so a numbered report never replaces earlier runs
        from elasticdenser.eval.runs import write_trec_run

        folder = paths["json"].with_name(paths["json"].stem + RUNS_SUFFIX)
        written = [write_trec_run(run_, folder / f"{name}.trec") for name, run_ in runs.items() if run_ is not None]
        print(f"saved {len(written)} run file(s) in {folder}")
    return 0
