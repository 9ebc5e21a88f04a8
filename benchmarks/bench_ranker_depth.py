"""Does a shallow cross-encoder cut from the start checkpoint learn relevance at all? (issue 17)

Outside the elastic code on purpose: plain transformers ``AutoModel`` from the start checkpoint
(default: the bundled all-MiniLM-L6-v2) cut to its first ``--layers`` layers with every head and FFN
neuron, a new ``tanh(dense)`` + one-logit head on the CLS or mean-pooled vector, trained with
listwise cross-entropy on squad-sample-test's training half (the positive + 7 BM25 negatives from
its top 20), then MRR@10 reranking BM25's top 20 for the first test questions. If this fails, the
elastic ranker's point of the same depth cannot be expected to train either::

    HF_HUB_OFFLINE=1 python benchmarks/bench_ranker_depth.py --layers 3 --pooling cls
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--test-queries", type=int, default=200)
    ap.add_argument("--model", help="start checkpoint (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    args = ap.parse_args(argv)

    import bm25s
    from transformers import AutoModel, AutoTokenizer

    from elasticdenser.data import load_collection
    from elasticdenser.model.loading import default_model_path

    torch.manual_seed(0)
    coll = load_collection("squad-sample-test", args.data_dir)
    docs = list(coll.corpus)
    ids, text = [d.doc_id for d in docs], {d.doc_id: d.contents for d in docs}
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize([d.contents for d in docs], show_progress=False), show_progress=False)

    def top(queries, k=20):
        rows, _ = bm25.retrieve(bm25s.tokenize(queries, show_progress=False), k=k, show_progress=False)
        return [[ids[j] for j in row] for row in rows]

    train = [(q.text, coll.train_positives[q.query_id][0]) for q in coll.train_queries
             if coll.train_positives.get(q.query_id)]
    random.Random(0).shuffle(train)
    train = train[:2000]
    candidates = top([q for q, _ in train])
    test = [q for q in coll.queries if q.query_id in coll.qrels][: args.test_queries]
    test_candidates = top([q.text for q in test])

    path = args.model or default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    body = AutoModel.from_pretrained(path)
    body.encoder.layer = body.encoder.layer[: args.layers]
    hidden = body.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = max(1, int(0.1 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / args.steps))

    def score(queries, passages):
        b = tok(queries, passages, padding=True, truncation=True, max_length=192, return_tensors="pt")
        h = body(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return head(h[:, 0] if args.pooling == "cls" else (h * m).sum(1) / m.sum(1)).squeeze(-1)

    rng, t0, losses, log = random.Random(1), time.time(), [], {}
    body.train()
    head.train()
    for step in range(args.steps):
        qs, ps = [], []
        for _ in range(4):
            i = rng.randrange(len(train))
            query, positive = train[i]
            negatives = [d for d in candidates[i] if d != positive]
            rng.shuffle(negatives)
            qs += [query] * 8
            ps += [text[d] for d in [positive] + negatives[:7]]
        loss = F.cross_entropy(score(qs, ps).view(4, 8), torch.zeros(4, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log[step + 1] = round(float(np.mean(losses[-50:])), 3)
            print(f"step {step + 1}: loss {log[step + 1]} ({time.time() - t0:.0f} s)", flush=True)

    def mrr10(query, ranked):
        rel = coll.qrels[query.query_id]
        return next((1 / (r + 1) for r, d in enumerate(ranked[:10]) if rel.get(d, 0) > 0), 0.0)

    body.eval()
    head.eval()
    with torch.no_grad():
        reranked = [[cl[j] for j in np.argsort(-score([q.text] * len(cl), [text[d] for d in cl]).numpy())]
                    for q, cl in zip(test, test_candidates)]
    print(json.dumps({"layers": args.layers, "pooling": args.pooling, "steps": args.steps, "lr": args.lr,
                      "loss_per_50_steps": log, "mrr@10": float(np.mean([mrr10(q, r) for q, r in zip(test, reranked)])),
                      "bm25_mrr@10": float(np.mean([mrr10(q, c) for q, c in zip(test, test_candidates)])),
                      "seconds": round(time.time() - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
