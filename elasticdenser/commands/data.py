"""``elasticdenser data list|show|export``: inspect and convert collections.

``show`` prints the counts a user checks before trusting an experiment (documents, queries,
qrels, answers, training data, held-out questions, and anything skipped on purpose).
"""
from __future__ import annotations

import argparse
import json
from typing import Dict

from elasticdenser.commands._common import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list, show and export datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    lp = dsub.add_parser("list", help="named collections and the query pool")
    lp.set_defaults(func=run_list)

    sp = dsub.add_parser("show", help="counts of corpus, queries, qrels and answers of a collection")
    sp.add_argument("name", help="nq-sample, squad-sample, scifact, trec-dl, query-pool, an ir_datasets id, or a path")
    add_data_dir(sp)
    sp.add_argument("--exclude", default=None,
                    help="query-pool only: comma-separated collections whose evaluation questions are guarded "
                    "(default nq-sample)")
    sp.add_argument("--drop-overlap", action="store_true",
                    help="query-pool only: drop (and count) overlapping questions instead of failing")
    sp.add_argument("--json", action="store_true", help="print the counts as JSON")
    sp.set_defaults(func=run_show)

    ep = dsub.add_parser("export", help="write a collection as a BEIR folder or JSON lines + TREC qrels")
    ep.add_argument("name")
    ep.add_argument("out", help="output folder")
    ep.add_argument("--format", choices=("beir", "jsonl"), default="beir")
    add_data_dir(ep)
    ep.set_defaults(func=run_export)


def run_list(args: argparse.Namespace) -> int:
    from elasticdenser.data.samples import SAMPLES

    for spec in SAMPLES.values():
        print(f"{spec.name:14s} {spec.description}")
    print(f"{'query-pool':14s} unlabeled training questions: DPR NQ dev + TriviaQA dev, NQ test removed, leakage-guarded")
    print("also: ir_datasets ids (dpr-w100/natural-questions/{train,dev,test}, dpr-w100/trivia-qa/{train,dev,test}, "
          "beir/<name>/<split>, irds:<id>) and local paths (BEIR folder, SQuAD JSON, DPR biencoder JSON)")
    return 0


def _print_counts(title: str, counts: Dict[str, int], skipped: Dict[str, int], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"name": title, **counts, "skipped": skipped}, indent=2))
        return
    print(title)
    for key, value in counts.items():
        print(f"  {key:22s} {value:>10,}")
    for reason, count in skipped.items():
        print(f"  skipped: {reason}: {count:,}")


def run_show(args: argparse.Namespace) -> int:
    import elasticdenser.data as data

    if args.name == data.QUERY_POOL:
        exclude = None if args.exclude is None else [e for e in args.exclude.split(",") if e]
        pool = data.load_query_pool(data_dir=args.data_dir, exclude=exclude, drop_overlap=args.drop_overlap)
        counts = {"queries": len(pool), "queries_with_answers": sum(1 for q in pool if q.answers),
                  "dropped": len(pool.dropped)}
        _print_counts("query-pool", counts, pool.skipped, args.json)
        return 0
    coll = data.load_collection(args.name, args.data_dir)
    counts = dict(coll.summary())
    _print_counts(coll.name, counts, coll.skipped, args.json)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import elasticdenser.data as data
    from elasticdenser.data.export import export_collection

    coll = data.load_collection(args.name, args.data_dir)
    written = export_collection(coll, args.out, args.format)
    for name, count in written.items():
        print(f"{args.out}/{name}: {count:,} records")
    return 0
