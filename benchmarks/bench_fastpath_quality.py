"""Correctness of the fast paths against the eager fp32 reference on nq-sample (issue 8).

For every default point: query embeddings from each backend vs eager (cosine), and MRR@10 / nDCG@10
of nq-sample (2,655 questions, 4,351 passages; documents: eager full-model embeddings truncated to the
point's width and re-normalised, cached under /tmp). Documents are also encoded with the fast
full-point path (bulk, batch 32) and compared with the eager ones.

    python benchmarks/bench_fastpath_quality.py --out benchmarks/results/fastpath-quality.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from elasticdenser.data import load_collection
from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.operating_point import truncate


def metrics(qids, q, docs, doc_ids, qrels):
    from ranx import Qrels, Run, evaluate

    scores = q @ docs.T
    top = np.argsort(-scores, axis=1)[:, :10]
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
    qr = {qid: {d: int(g) for d, g in qrels[qid].items()} for qid in qids}
    return evaluate(Qrels(qr), Run(run), ["mrr@10", "ndcg@10"])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA", "/work/shared/data"))
    ap.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2, untrained)")
    ap.add_argument("--cache", default="/tmp/elasticdenser-fastpath")
    ap.add_argument("--backends", default="jit,onnx")
    ap.add_argument("--bf16-queries", type=int, default=256, help="bf16 cosine on this many queries (bf16 is slow here)")
    ap.add_argument("--bulk-docs", type=int, default=512, help="documents re-encoded by each fast backend (bulk check)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    enc = ElasticEncoder.from_pretrained(args.model)
    col = load_collection("nq-sample", args.data_dir)
    doc_ids = [d.doc_id for d in col.corpus]
    doc_texts = [d.contents for d in col.corpus]
    qs = [q for q in col.queries if q.query_id in col.qrels]
    qids = [q.query_id for q in qs]
    qtexts = [q.text for q in qs]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    dpath = cache / f"nq-sample-docs-eager-full-{enc.fingerprint()[:16]}.npy"
    t = time.time()
    if dpath.is_file():
        docs = np.load(dpath)
    else:
        docs = enc.encode(doc_texts, None, batch_size=32, backend="eager")
        np.save(dpath, docs)
    print(f"docs {docs.shape} in {time.time() - t:.1f}s", flush=True)
    result = {"model": args.model or "all-MiniLM-L6-v2", "queries": len(qs), "documents": len(doc_ids), "points": {},
              "docs_bulk": {}}
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        t = time.time()
        n = args.bulk_docs
        d2 = enc.encode(doc_texts[:n], None, batch_size=32, backend=b)
        cos = (d2 * docs[:n]).sum(1) / np.linalg.norm(d2, axis=1) / np.linalg.norm(docs[:n], axis=1)
        result["docs_bulk"][b] = {"docs": n, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                                  "seconds": time.time() - t}
        print("docs", b, result["docs_bulk"][b], flush=True)
    for p in enc.default_points():
        dw = truncate(docs, p.width, enc.normalize, enc.output_basis)
        entry = {}
        ref = enc.encode(qtexts, p, batch_size=32, backend="eager")
        entry["eager"] = metrics(qids, ref, dw, doc_ids, col.qrels)
        for b in backends:
            t = time.time()
            e = enc.encode(qtexts, p, batch_size=32, backend=b)
            m = metrics(qids, e, dw, doc_ids, col.qrels)
            cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
            m.update(cos_min=float(cos.min()), seconds=time.time() - t,
                     d_mrr=m["mrr@10"] - entry["eager"]["mrr@10"], d_ndcg=m["ndcg@10"] - entry["eager"]["ndcg@10"])
            entry[b] = m
        if args.bf16_queries:
            n = args.bf16_queries
            e = enc.encode(qtexts[:n], p, batch_size=32, bf16=True, backend="eager")
            cos = (e * ref[:n]).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref[:n], axis=1)
            sub_ref = metrics(qids[:n], ref[:n], dw, doc_ids, col.qrels)
            sub = metrics(qids[:n], e, dw, doc_ids, col.qrels)
            entry["bf16_autocast_subset"] = {"queries": n, "cos_min": float(cos.min()),
                                             "d_mrr": sub["mrr@10"] - sub_ref["mrr@10"],
                                             "d_ndcg": sub["ndcg@10"] - sub_ref["ndcg@10"]}
        result["points"][p.name] = entry
        print(p.name, json.dumps(entry), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
