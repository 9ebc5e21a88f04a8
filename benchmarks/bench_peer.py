"""Peer method for issue 7: sentence-transformers' 2D Matryoshka training on the same data and budget.

``Matryoshka2dLoss`` (``AdaptiveLayerLoss`` over depth + ``MatryoshkaLoss`` over width) wrapped
around ``MultipleNegativesRankingLoss``. It trains BOTH towers (queries and passages share the
model), so its documents must be re-encoded per depth -- ``bench_compare.py`` does that and counts
the cost. Data: the same leakage-guarded unlabeled question pool ElasticDenser distils on, each
question paired with its pseudo-positive, the frozen all-MiniLM-L6-v2 teacher's top-1 nq-sample
passage (the same teacher signal ElasticDenser gets, reduced to the pair form this loss takes).
Budget: stop at ``--budget-s`` wall-clock seconds or ``--steps``, whichever comes first.

    .venv/bin/python benchmarks/bench_peer.py --out runs/peer --budget-s 1500 --threads 1 \\
        --doc-embeddings runs/t4-sandwich/cache/docs-<key>.npy

Writes ``<out>/model`` (a sentence-transformers folder, loadable by ``ElasticEncoder``) and
``<out>/training_summary.json`` (steps, wall time, peak memory).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--budget-s", type=float, default=None, help="stop after this much training wall time")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--dims", default="384,256,192")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--doc-embeddings", help="cached full-model nq-sample passage embeddings (.npy)")
    ap.add_argument("--exclude", default="nq-sample,squad-sample,scifact,trec-dl")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        Matryoshka2dLoss,
        MultipleNegativesRankingLoss,
    )
    from tqdm.auto import tqdm

    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.model.loading import default_model_path
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.data import load_training_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(output_dir=str(out), data_dir=args.data_dir, collection="nq-sample", sources=["pool"],
                      exclude=[e for e in args.exclude.split(",") if e], drop_overlap=True, eval_every=0,
                      seed=args.seed).validate()
    data = load_training_data(cfg)  # the same guarded pool ElasticDenser trains on
    n = min(len(data.examples), args.steps * args.batch_size)
    order = np.random.default_rng(args.seed).permutation(len(data.examples))[:n]
    questions = [data.examples[i].text for i in order]

    teacher = ElasticEncoder.from_pretrained(None)
    docs = np.load(args.doc_embeddings) if args.doc_embeddings else teacher.encode(
        data.doc_texts, None, batch_size=64, max_length=cfg.doc_max_length, progress=True)
    if docs.shape[0] != len(data.doc_texts):
        raise SystemExit(f"{args.doc_embeddings}: {docs.shape[0]} rows for {len(data.doc_texts)} nq-sample passages")
    t0 = time.time()
    q = teacher.encode(questions, None, batch_size=128, max_length=cfg.query_max_length, progress=True)
    positives = [data.doc_texts[i] for i in (q @ docs.T).argmax(axis=1)]
    label_s = time.time() - t0
    del teacher

    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = cfg.doc_max_length
    dims = [int(d) for d in args.dims.split(",")]
    loss = Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=dims)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = n // args.batch_size
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / total))
    model.train()
    t_train = time.time()
    step = 0
    losses = []
    bar = tqdm(total=total, desc="2D Matryoshka (peer)", unit="step")
    while step < total:
        if args.budget_s and time.time() - t_train > args.budget_s:
            break
        sl = slice(step * args.batch_size, (step + 1) * args.batch_size)
        feats = [model.tokenize(questions[sl]), model.tokenize(positives[sl])]
        value = loss(feats, torch.empty(0))
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(float(value.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
    bar.close()
    train_s = time.time() - t_train
    model.save(str(out / "model"))
    summary = {
        "method": "sentence-transformers Matryoshka2dLoss(MultipleNegativesRankingLoss)",
        "steps": step, "planned_steps": total, "batch_size": args.batch_size, "lr": args.lr, "dims": dims,
        "train_questions_seen": step * args.batch_size, "wall_time_s": round(train_s, 1),
        "label_time_s": round(label_s, 1), "first_loss": float(np.mean(losses[:10])) if losses else None,
        "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
