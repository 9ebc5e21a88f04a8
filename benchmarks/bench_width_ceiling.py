"""How much of a collection's quality a width cut alone costs (issue 14's "why").

The smallest default point cuts depth, heads, FFN neurons *and* the embedding width. This measures
the width alone: the experiment's full query point and its stored document vectors, both
expressed in the corpus's principal basis (the output basis training uses) and cut to ``d``
dimensions by the library's width rule, scored exactly, nDCG@10 / MRR@10 with ranx. If the cut to
the smallest point's width keeps the full quality, what the small point loses is its compute.

    python benchmarks/bench_width_ceiling.py --exp runs/adapt/trec-dl/base --collection trec-dl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an experiment indexed with the untrained model")
    ap.add_argument("--collection", required=True)
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--widths", default="384,256,192,128")
    ap.add_argument("--results", default="benchmarks/results/width_ceiling.json")
    args = ap.parse_args(argv)

    import torch

    from elasticdenser.data import load_collection
    from elasticdenser.eval.metrics import evaluate, make_qrels, make_run
    from elasticdenser.operating_point import principal_basis, truncate
    from elasticdenser.searcher import Searcher

    searcher = Searcher.open(args.exp)
    coll = load_collection(args.collection, args.data_dir)
    docs = torch.from_numpy(np.array(np.load(Path(args.exp) / "embeddings.npy", mmap_mode="r"), dtype=np.float32))
    ids = (Path(args.exp) / "doc_ids.txt").read_text(encoding="utf-8").splitlines()
    full = searcher.encoder.space.full
    queries = torch.from_numpy(searcher.encode([q.text for q in coll.queries], point=full))
    basis = torch.from_numpy(principal_basis(docs.numpy()))
    qrels = make_qrels({q.query_id: coll.qrels[q.query_id] for q in coll.queries if q.query_id in coll.qrels})
    rows = {}
    for width in (int(w) for w in args.widths.split(",")):
        scores = truncate(queries, width, True, basis) @ truncate(docs, width, True, basis).T
        top = scores.topk(min(100, scores.shape[1]), dim=1)
        run = {q.query_id: {ids[j]: float(s) for j, s in zip(top.indices[i].tolist(), top.values[i].tolist())}
               for i, q in enumerate(coll.queries)}
        rows[width] = {k: round(float(v), 4) for k, v in evaluate(qrels, make_run(run), ["ndcg@10", "mrr@10"]).items()}
        print(f"{args.collection} full point cut to {width}: {rows[width]}", flush=True)
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.collection] = {"point": str(full), "rows": rows}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
