"""Speed (and prefix quality) of the elastic encoder's operating points on CPU.

Measures, interleaved in one run (every round visits every variant in a fresh random order, so
background load hits all variants alike):

* query-encoding latency at batch 1 (median and p90 over ``--calls`` calls), with 2 threads and 1 thread;
* throughput at batch 32 (queries/s, median batch time over ``--batches`` batches);

for plain ``transformers`` inference of the checkpoint (``hf``), and per default operating point
the elastic encoder's sliced-on-the-fly execution (``sliced``: views of the shared weights) and
a materialised standalone module (``mat``: physically copied smaller weights, fused QKV).
Inputs are real NQ-open questions (~12-16 word-piece tokens), tokenised beforehand: the timings
are the model forward (embeddings -> pooled, truncated, normalised vector), not tokenisation.

``--quality`` also measures Recall@20 with plain truncation (no elastic training) on NQ-open
questions against the pool of their gold passages, before and after importance reordering.

    python benchmarks/bench_encoder.py --out benchmarks/encoder-results.json
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.operating_point import OperatingPoint, truncate

REPO = Path(__file__).resolve().parents[1]


def load_nq(data_dir: Path):
    with gzip.open(data_dir / "nq-gold-passages" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    questions = [r["question"] for r in rows]
    passages = [r["ctxs"][0]["title"] + " " + r["ctxs"][0]["text"] for r in rows]
    return questions, passages


def p90(xs):
    return float(np.percentile(xs, 90))


def make_variants(enc: ElasticEncoder, hf_model, points):
    variants = {}

    def hf_call(b):
        out = hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       token_type_ids=b["token_type_ids"]).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(out.dtype)
        return torch.nn.functional.normalize((out * m).sum(1) / m.sum(1), dim=-1)

    variants["hf L6 full"] = hf_call
    for p in points:
        variants[f"sliced {p.name}"] = (lambda b, p=p: enc(b["input_ids"], b["attention_mask"], p, b["token_type_ids"]))
        mod = enc.materialize(p)
        variants[f"mat {p.name}"] = (lambda b, m=mod: m(b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    return variants


def bench_latency(variants, batches, rounds, seed):
    rng = random.Random(seed)
    names = list(variants)
    times = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # warm-up
            for b in batches[:5]:
                variants[n](b)
        for r in range(rounds):
            b = batches[r % len(batches)]
            rng.shuffle(names)
            for n in names:
                t0 = time.perf_counter()
                variants[n](b)
                times[n].append(time.perf_counter() - t0)
    return times


def recall_at_k(q, d, gold, k=20):
    scores = q @ d.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float(np.mean([gold[i] in set(top[i]) for i in range(len(gold))]))


def quality(enc, questions, passages, n_eval, n_imp_q, n_imp_d, points, seed):
    """Recall@20 of questions[:n_eval] against the pool of their (deduplicated) gold passages."""
    uniq = {}
    gold = [uniq.setdefault(p, len(uniq)) for p in passages[:n_eval]]
    corpus = list(uniq)
    qs = questions[:n_eval]
    t0 = time.perf_counter()
    docs = enc.encode(corpus, batch_size=32)  # full model; reordering never changes it
    t_docs = time.perf_counter() - t0
    # importance sample: other questions and other passages (disjoint from the evaluation pool)
    imp_q = questions[-n_imp_q:]
    rest = [p for p in dict.fromkeys(passages[n_eval:]) if p not in uniq]
    imp_d = random.Random(seed).sample(rest, min(n_imp_d, len(rest)))
    res = {"corpus": len(corpus), "eval_queries": len(qs), "doc_encode_s": round(t_docs, 1),
           "importance_queries": len(imp_q), "importance_documents": len(imp_d), "recall@20": {}}

    def run(e, tag):
        for p in points:
            qv = e.encode(qs, p, batch_size=64)
            dv = truncate(docs, p.width, e.normalize, e.output_basis)
            res["recall@20"].setdefault(p.name, {})[tag] = recall_at_k(qv, dv, gold)

    run(enc, "original order")
    ro = copy.deepcopy(enc)
    t0 = time.perf_counter()
    ro.reorder_by_importance(imp_q, imp_d, batch_size=32)
    res["reorder_s"] = round(time.perf_counter() - t0, 1)
    run(ro, "reordered")
    probe = ro.encode(qs[:64])
    res["reorder_full_max_abs_diff"] = float(np.abs(probe - enc.encode(qs[:64])).max())
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir (default all-MiniLM-L6-v2)")
    ap.add_argument("--data", default=os.environ.get("ELASTICDENSER_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--calls", type=int, default=300, help="batch-1 calls per variant and thread setting")
    ap.add_argument("--batches", type=int, default=30, help="batch-32 calls per variant")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--eval-queries", type=int, default=1000, help="quality: questions (their gold passages form the corpus)")
    ap.add_argument("--importance-queries", type=int, default=128)
    ap.add_argument("--importance-docs", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args(argv)

    from transformers import AutoModel

    torch.manual_seed(args.seed)
    enc = ElasticEncoder.from_pretrained(args.model)
    hf_model = AutoModel.from_pretrained(enc.source if args.model is None else args.model).eval()
    questions, passages = load_nq(Path(args.data))
    points = enc.default_points()
    variants = make_variants(enc, hf_model, points)

    rng = random.Random(args.seed)
    pool = questions[:]
    rng.shuffle(pool)
    b1 = [enc.tokenize([q]) for q in pool[:200]]
    b32 = [enc.tokenize(pool[200 + 32 * i : 232 + 32 * i]) for i in range(20)]
    lens1 = [int(b["input_ids"].shape[1]) for b in b1]
    lens32 = [int(b["input_ids"].shape[1]) for b in b32]
    result = {
        "model": enc.source, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "tokens_batch1_median": statistics.median(lens1), "tokens_batch32_padded_median": statistics.median(lens32),
        "calls": args.calls, "batches": args.batches, "latency": {}, "throughput": {},
    }
    t_start = time.perf_counter()
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        lat = bench_latency(variants, b1, args.calls, args.seed)
        result["latency"][threads] = {n: {"median_ms": 1e3 * statistics.median(t), "p90_ms": 1e3 * p90(t)}
                                      for n, t in lat.items()}
        print(f"[{threads} thread(s)] batch-1 done", file=sys.stderr)
    torch.set_num_threads(int(args.threads.split(",")[0]))
    thr = bench_latency(variants, b32, args.batches, args.seed + 1)
    result["throughput"] = {n: {"median_batch_ms": 1e3 * statistics.median(t), "qps": 32 / statistics.median(t)}
                            for n, t in thr.items()}
    result["timing_s"] = round(time.perf_counter() - t_start, 1)
    if args.quality:
        result["quality"] = quality(enc, questions, passages, args.eval_queries, args.importance_queries,
                                    args.importance_docs, points + [OperatingPoint.parse("L6-H6-F768-D384")], args.seed)

    print(report(result, points))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def report(r, points) -> str:
    t_first = sorted(r["latency"], key=lambda x: -int(x))
    lines = [
        f"model {r['model']}, torch {r['torch']}, {r['cpu_count']} CPUs; batch-1 tokens median {r['tokens_batch1_median']}, "
        f"batch-32 padded length median {r['tokens_batch32_padded_median']}; {r['calls']} batch-1 calls and "
        f"{r['batches']} batch-32 calls per variant, interleaved",
        "",
        "| variant | " + " | ".join(f"b1 {t}T median ms | b1 {t}T p90 ms" for t in t_first)
        + " | b32 ms | b32 q/s | speed-up vs full (b1 " + "/".join(f"{t}T" for t in t_first) + ", b32) |",
        "|---|" + "---|---|" * len(t_first) + "---|---|---|",
    ]
    for kind in ("sliced", "mat"):
        base_name = f"{kind} {points[0].name}"
        for name in [n for n in r["throughput"] if n.startswith(kind)]:
            cells = []
            ups = []
            for t in t_first:
                L = r["latency"][t]
                cells += [f"{L[name]['median_ms']:.2f}", f"{L[name]['p90_ms']:.2f}"]
                ups.append(f"{L[base_name]['median_ms'] / L[name]['median_ms']:.2f}x")
            T = r["throughput"]
            ups.append(f"{T[name]['qps'] / T[base_name]['qps']:.2f}x")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {T[name]['median_batch_ms']:.1f} | {T[name]['qps']:.0f} | "
                         + ", ".join(ups) + " |")
    hf = "hf L6 full"
    cells = []
    for t in t_first:
        L = r["latency"][t]
        cells += [f"{L[hf]['median_ms']:.2f}", f"{L[hf]['p90_ms']:.2f}"]
    T = r["throughput"]
    lines.append(f"| {hf} (plain transformers) | " + " | ".join(cells)
                 + f" | {T[hf]['median_batch_ms']:.1f} | {T[hf]['qps']:.0f} | - |")
    lines.append("")
    for kind in ("sliced", "mat"):
        full = f"{kind} {points[0].name}"
        ov = [f"b1 {t}T {100 * (r['latency'][t][full]['median_ms'] / r['latency'][t][hf]['median_ms'] - 1):+.1f}%"
              for t in t_first]
        ov.append(f"b32 {100 * (T[hf]['qps'] / T[full]['qps'] - 1):+.1f}%")
        lines.append(f"full point overhead vs plain transformers ({kind}): " + ", ".join(ov))
    if "quality" in r:
        q = r["quality"]
        lines += ["", f"Recall@20, plain truncation, {q['eval_queries']} NQ-open questions vs {q['corpus']} gold passages "
                  f"(importance sample: {q['importance_queries']} other questions, {q['importance_documents']} passages; "
                  f"reorder took {q['reorder_s']} s; full-model max |diff| after reorder "
                  f"{q['reorder_full_max_abs_diff']:.1e})", "",
                  "| point | original order | reordered |", "|---|---|---|"]
        for name, v in q["recall@20"].items():
            lines.append(f"| {name} | {v['original order']:.3f} | {v['reordered']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
