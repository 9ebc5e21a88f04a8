"""Elastic-training benchmark (issue 4): distil all-MiniLM-L6-v2 into its default operating points.

Start from all-MiniLM-L6-v2, freeze the document embeddings of nq-sample (full model, computed
once), distil on the unlabeled question pool (the data layer's ``query-pool``, leakage-guarded
against nq-sample), then evaluate every default point on nq-sample's test questions -- which were
never trained on -- and compare with plain truncation of the untrained model.

    .venv/bin/python benchmarks/bench_train.py --out runs/bench-train            # the real run
    .venv/bin/python benchmarks/bench_train.py --out /tmp/x --steps 50           # quick look
    .venv/bin/python benchmarks/bench_train.py --eval-only runs/bench-train      # re-evaluate

Prints a per-point table (MRR@10, nDCG@10, Recall@20, % of the full model) for trained vs
truncation and writes it (plus config, wall time and peak memory) to ``<out>/bench_train.json``
and ``<out>/bench_train.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from elasticdenser.operating_point import truncate

METRICS = ["mrr@10", "ndcg@10", "recall@20"]


def bench_config(out: str, steps: int, **overrides):
    from elasticdenser.training.config import TrainConfig

    cfg = TrainConfig(
        model=None,  # all-MiniLM-L6-v2
        output_dir=out,
        collection="nq-sample",
        sources=["pool"],
        exclude=["nq-sample"],
        mode="frozen",
        sampling="sandwich",
        num_random=2,
        steps=steps,
        batch_size=32,
        lr=2e-4,
        warmup_steps=max(1, steps // 20),
        schedule="linear",
        distill_weight=1.0,
        distill_temperature=0.05,
        align_weight=1.0,
        contrastive_weight=1.0,
        checkpoint_every=max(50, steps // 4),
        eval_every=max(50, steps // 4),
        log_every=10,
    )
    return cfg.replace(**overrides) if overrides else cfg


def search(queries: np.ndarray, docs: np.ndarray, k: int = 100):
    q = torch.from_numpy(queries)
    d = torch.from_numpy(docs)
    scores = q @ d.T
    top = scores.topk(min(k, d.shape[0]), dim=-1)
    return top.values.numpy(), top.indices.numpy()


def truncate_docs(doc_emb: np.ndarray, width: int, normalize: bool = True, basis=None) -> np.ndarray:
    return np.ascontiguousarray(truncate(doc_emb, width, normalize, basis))


def evaluate_points(encoder, points, collection, doc_emb: np.ndarray, batch_size: int = 128) -> Dict[str, Dict[str, float]]:
    """MRR@10 / nDCG@10 / Recall@20 of each point on the collection's questions against fixed docs."""
    from ranx import Qrels, Run, evaluate

    queries = [q for q in collection.queries if q.query_id in collection.qrels]
    texts = [q.text for q in queries]
    doc_ids = collection.corpus.doc_ids()
    qrels = Qrels.from_dict({q: {d: int(g) for d, g in v.items()} for q, v in collection.qrels.items()
                             if q in {x.query_id for x in queries}})
    out = {}
    for p in points:
        qv = encoder.encode(texts, p, batch_size=batch_size, max_length=64)
        vals, idx = search(qv, truncate_docs(doc_emb, p.width, encoder.normalize, encoder.output_basis), k=100)
        run = Run.from_dict(
            {q.query_id: {doc_ids[j]: float(s) for j, s in zip(ix, vs)} for q, ix, vs in zip(queries, idx, vals)}
        )
        res = evaluate(qrels, run, METRICS, make_comparable=True)
        out[p.name] = {m: float(res[m]) for m in METRICS}
    return out


def table(full_name: str, trained: Dict, baselines: Dict[str, Dict]) -> str:
    ref = trained.get(full_name) or next(iter(baselines.values()))[full_name]
    lines = [
        "| point | model | MRR@10 | nDCG@10 | Recall@20 | % full MRR@10 | % full nDCG@10 | % full R@20 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("trained", trained)] + list(baselines.items())
    for point in trained:
        for label, res in rows:
            r = res[point]
            lines.append(
                f"| {point} | {label} | {r['mrr@10']:.3f} | {r['ndcg@10']:.3f} | {r['recall@20']:.3f} | "
                + " | ".join(f"{100 * r[m] / ref[m]:.1f}%" for m in METRICS)
                + " |"
            )
    return "\n".join(lines)


def peak_rss_gb() -> float:
    # ru_maxrss is KiB on Linux; children (none here) are not included
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-train")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--config", help="YAML/TOML train config (overrides the built-in benchmark config)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--eval-only", help="evaluate an existing training output dir, no training")
    ap.add_argument("--eval-checkpoint", help="with --eval-only: evaluate this checkpoint dir instead of <out>/model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-truncation rows")
    ap.add_argument("--baseline-only", metavar="JSON", help="only evaluate plain truncation, write it to JSON, exit")
    ap.add_argument("--baseline-json", metavar="JSON", help="reuse plain-truncation figures from --baseline-only")
    ap.add_argument("--baseline-docs", metavar="NPY", help="with --baseline-only: cached full-model document embeddings")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import elasticdenser.data as data
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.loop import SUMMARY_FILE, train

    t0 = time.time()
    if args.baseline_only:
        collection = data.load_collection("nq-sample")
        start = ElasticEncoder.from_pretrained(None)
        key_cfg = bench_config("/tmp/unused", 1)
        doc_emb = start.encode([d.contents for d in collection.corpus], None, batch_size=64, max_length=key_cfg.doc_max_length) \
            if not args.baseline_docs else np.load(args.baseline_docs)
        res = evaluate_points(start, start.space.default_points(), collection, doc_emb)
        Path(args.baseline_only).write_text(json.dumps({"truncation": res, "wall_s": time.time() - t0}, indent=1))
        print(json.dumps(res, indent=1))
        return 0
    out = Path(args.eval_only or args.out)
    if args.eval_only:
        cfg = TrainConfig.load(out / "train_config.yaml")
        train_wall = None
        if (out / SUMMARY_FILE).is_file():
            train_wall = json.loads((out / SUMMARY_FILE).read_text()).get("wall_time_s")
    else:
        cfg = TrainConfig.load(args.config) if args.config else bench_config(str(out), args.steps)
        cfg = cfg.replace(output_dir=str(out))
        if args.set:
            cfg = cfg.override(args.set)
        t_train = time.time()
        result = train(cfg)
        train_wall = time.time() - t_train
        print(f"trained {result.steps} steps in {train_wall:.0f} s; model -> {result.model_dir}", flush=True)

    collection = data.load_collection("nq-sample", data_dir=cfg.data_dir)
    if args.eval_checkpoint:
        from elasticdenser.training.checkpoint import load_checkpoint_encoder
        from elasticdenser.training.documents import doc_cache_key

        start = ElasticEncoder.from_pretrained(cfg.model)
        cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
        doc_emb = np.load(cache / f"docs-{doc_cache_key(start, cfg, len(collection.corpus))}.npy")
        del start
        trained_enc = load_checkpoint_encoder(args.eval_checkpoint)
        train_wall = None
    else:
        summary = json.loads((out / SUMMARY_FILE).read_text())
        doc_emb = np.load(summary["document_embeddings"])
        trained_enc = ElasticEncoder.from_pretrained(out / "model")
    points = trained_enc.space.default_points()
    t_eval = time.time()
    trained = evaluate_points(trained_enc, points, collection, doc_emb)
    arrangement = (trained_enc.head_permutation, trained_enc.ffn_permutation, list(trained_enc.layer_order))
    del trained_enc
    baselines = {}
    if args.baseline_json:
        baselines["truncation"] = json.loads(Path(args.baseline_json).read_text())["truncation"]
    elif not args.no_baseline:
        start = ElasticEncoder.from_pretrained(cfg.model)
        baselines["truncation"] = evaluate_points(start, points, collection, doc_emb)
    if not args.no_baseline:
        # the same heads / neurons / layers the trained model uses, before any training: what the
        # reordering alone buys, so the gain of training is shown separately
        start = ElasticEncoder.from_pretrained(cfg.model)
        start.apply_permutation(arrangement[0], arrangement[1])
        start.layer_order = arrangement[2]
        baselines["reordered, untrained"] = evaluate_points(start, points, collection, doc_emb)
        del start
    eval_wall = time.time() - t_eval

    full = points[0].name
    md = table(full, trained, baselines)
    smallest = points[-1].name
    ref = baselines.get("truncation", trained)[full]
    verdict = {
        m: trained[smallest][m] / ref[m] for m in METRICS
    }
    targets = {"mrr@10": 0.92, "ndcg@10": 0.92, "recall@20": 0.98}
    ok = all(verdict[m] >= targets[m] for m in METRICS)
    monotone = all(
        trained[points[i].name][m] / ref[m] >= verdict[m] - 1e-9 for i in range(len(points) - 1) for m in METRICS
    )
    report = {
        "command": " ".join([sys.executable] + sys.argv),
        "config": cfg.to_dict(),
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "total_wall_s": time.time() - t0,
        # an --eval-only process never trained: its RSS is the evaluation's, under its own name
        ("eval_peak_rss_gb" if args.eval_only else "peak_rss_gb"): peak_rss_gb(),
        "threads": torch.get_num_threads(),
        "trained": trained,
        "baselines": baselines,
        "smallest_point_retention": verdict,
        "targets_met": ok,
        "larger_points_keep_more": monotone,
        "metrics_file": str(out / "metrics.jsonl"),
    }
    tag = f"-{Path(args.eval_checkpoint).name}" if args.eval_checkpoint else ""
    report["evaluated"] = str(args.eval_checkpoint or out / "model")
    (out / f"bench_train{tag}.json").write_text(json.dumps(report, indent=1))
    (out / f"bench_train{tag}.md").write_text(md + "\n")
    print(md)
    print(
        f"\nsmallest point {smallest} keeps "
        + ", ".join(f"{m} {100 * v:.1f}% (target {100 * targets[m]:.0f}%)" for m, v in verdict.items())
        + f" -> {'MET' if ok else 'NOT met'}; larger points keep more: {monotone}"
    )
    print(f"train wall {train_wall or float('nan'):.0f} s, eval {eval_wall:.0f} s, peak RSS {peak_rss_gb():.2f} GB, "
          f"threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
