"""Which layers should a shallow operating point keep? (issue 4: the depth axis)

Evaluates the untrained all-MiniLM-L6-v2 at depth 3 and 4 (every head, neuron and dimension kept)
with different nested layer subsets on nq-sample's test questions against the full model's
document vectors, then runs ``ElasticEncoder.reorder_layers`` (greedy elimination on pool
questions, never on nq-sample's test questions) and reports the order it picks.

    ELASTICDENSER_DATA=../shared/data .venv/bin/python benchmarks/bench_layers.py \\
        --docs runs/doc-cache/docs-1f343b11461d862331b4.npy --out benchmarks/results/layers.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import evaluate_points  # noqa: E402

SUBSETS = [(0, 1, 2), (0, 1, 5), (0, 2, 5), (0, 3, 5), (0, 4, 5), (1, 3, 5), (0, 2, 4),
           (0, 1, 2, 3), (0, 1, 2, 5), (0, 1, 3, 5), (0, 1, 4, 5), (0, 2, 4, 5)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", help="cached full-model nq-sample document vectors (.npy); else encoded here")
    ap.add_argument("--samples", type=int, default=128, help="pool questions for the greedy ordering")
    ap.add_argument("--documents", type=int, default=256, help="nq-sample passages for the greedy ordering")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/layers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import elasticdenser.data as data
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.operating_point import OperatingPoint

    coll = data.load_collection("nq-sample")
    enc = ElasticEncoder.from_pretrained()
    doc_emb = np.load(args.docs) if args.docs else enc.encode(
        [d.contents for d in coll.corpus], None, batch_size=64, max_length=256, progress=True)
    full = enc.space.full
    rows = {}
    for subset in SUBSETS:
        enc.layer_order = list(subset) + [i for i in range(full.layers) if i not in subset]
        point = OperatingPoint(len(subset), full.heads, full.ffn, full.width)
        rows[",".join(map(str, subset))] = res = evaluate_points(enc, [point], coll, doc_emb)[point.name]
        print(subset, {k: round(v, 3) for k, v in res.items()}, flush=True)
    enc.layer_order = list(range(full.layers))

    pool = data.load_query_pool(exclude=["nq-sample", "squad-sample", "scifact", "trec-dl"], drop_overlap=True)
    rng = np.random.default_rng(0)
    queries = [pool[i].text for i in rng.choice(len(pool), args.samples, replace=False)]
    docs = [coll.corpus[i].contents for i in sorted(rng.choice(len(coll.corpus), args.documents, replace=False))]
    t = time.time()
    order = enc.reorder_layers(queries, docs, max_doc_length=128)
    greedy_s = time.time() - t
    print(f"greedy layer order (most important first): {order} in {greedy_s:.1f} s")
    report = {"subsets": rows, "greedy_order": order, "greedy_seconds": greedy_s,
              "greedy_samples": args.samples, "greedy_documents": args.documents,
              "threads": args.threads, "command": " ".join([sys.executable] + sys.argv)}
    from elasticdenser.atomic import write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
