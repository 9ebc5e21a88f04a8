"""Speed of the fast serving paths vs the eager reference, as multiples of the compute floor (issue 8).

Interleaved in one run: every round visits every variant in a fresh random order (background load
lands on all variants alike); medians are reported. Per default point:

* batch-1 latency (real NQ-open questions, pre-tokenised) for eager fp32, ``jit``, ``onnx`` and the
  opt-in ``int8`` with 1 and 2 threads, eager bf16 autocast (1 thread), and the point's weight GEMMs
  alone (torch, 1 thread: how close to the floor the GEMMs themselves get at a query's shapes);
* batch-32 throughput (2 threads, and 1 thread for eager / onnx / int8);
* end-to-end ``encode(text, point, backend=...)`` at batch 1 (tokenisation included);
* bulk passage encoding at 128 tokens (batch 16, full point): eager fp32, onnx, bf16;
* 1 vs 2 threads on the serving backend at batch 1, 2, 4, 8, 16 (full and smallest point): where
  ``fastpath.SMALL_BATCH`` should switch from one thread to all.

Compute floor: ``ElasticSpace.flops(point, seq_len)`` at the measured (padded) sequence length, divided
by the matmul rate measured *in the same run* (2048^3 fp32 / 512^3 bf16 ``torch.mm``, interleaved with
the variants) at the same thread count. Also reports the one-off build (warm-up) time per backend.

    python benchmarks/bench_fastpath.py --out benchmarks/results/fastpath.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from elasticdenser.model import fastpath
from elasticdenser.model.encoder import ElasticEncoder


def med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA", "/work/shared/data"))
    ap.add_argument("--rounds", type=int, default=40, help="batch-1 rounds")
    ap.add_argument("--batches", type=int, default=6, help="batch-32 rounds")
    ap.add_argument("--passage-rounds", type=int, default=3)
    ap.add_argument("--thread-rounds", type=int, default=20, help="rounds of the 1- vs 2-thread sweep over batch sizes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("ELASTICDENSER_CACHE", "off")  # measure the build from scratch
    torch.manual_seed(0)
    rng = random.Random(0)
    enc = ElasticEncoder.from_pretrained()
    points = enc.default_points()
    with gzip.open(Path(args.data_dir) / "nq-gold-passages" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    questions = [r["question"] for r in rows[:400]]
    passages = [r["ctxs"][0]["title"] + " " + r["ctxs"][0]["text"] for r in rows[400:600]]

    def tok(texts, ml=None, tensors="pt"):
        b = enc.tokenizer(texts, padding=True, truncation=True, max_length=ml or enc.max_length, return_tensors=tensors)
        return b["input_ids"], b["attention_mask"], b["token_type_ids"]

    b1 = [tok([q]) for q in questions[: args.rounds]]
    tok1 = med([float(b[1].sum()) for b in b1])  # batch-1 tokens per query
    b32 = [tok(questions[200 + 32 * i : 232 + 32 * i]) for i in range(max(1, min(args.batches, 6)))]
    bp = [tok(passages[16 * i : 16 * i + 16], 128) for i in range(args.passage_rounds)]
    bx = {n: [tok(questions[300 + n * i : 300 + n * (i + 1)]) for i in range(3)] for n in (1, 2, 4, 8, 16)}

    # ---- build (warm-up) cost
    build = {}
    runners = {}
    for b in ("jit", "onnx", "int8"):
        if b not in fastpath.available_backends():
            continue
        for p in points:
            t = time.perf_counter()
            runners[(b, p)] = fastpath.get_runner(enc, p, b)
            runners[(b, p)](*b1[0])  # first call (session / graph init)
            build[f"{b} {p.name}"] = time.perf_counter() - t
            print(f"build {b} {p.name}: {build[f'{b} {p.name}']:.2f}s", flush=True)
    eager = {p: (enc.serving_module(p) or (lambda i, m, t, p=p: enc.forward(i, m, p, t))) for p in points}

    def eager_call(p, threads, bf16=False):
        def f(batch):
            torch.set_num_threads(threads)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return eager[p](*batch).float().numpy()
        return f

    def fast_call(b, p, threads):
        r = runners[(b, p)]
        return lambda batch: r(*batch, threads=threads)

    def e2e(p, backend, threads):
        def f(text):
            torch.set_num_threads(threads)
            fastpath.small_batch_threads = threads
            return enc.encode(text, p, backend=backend)
        return f

    def gemms_only(p, threads):
        """Only the point's weight GEMMs (torch, batch-1 shapes, one weight copy per layer): what the
        floor's 2048^3 rate cannot see, the GEMM rate at the shapes a single query really runs."""
        m = enc.materialize(p)
        x, a, h = (torch.randn(1, int(tok1), n) for n in (enc.space.hidden_size, m.layers[0].attn_out.in_features, p.ffn))

        def f(_batch):
            torch.set_num_threads(threads)
            for layer in m.layers:
                layer.qkv(x), layer.attn_out(a), layer.ffn_in(x), layer.ffn_out(h)
        return f

    fast_backends = [b for b in ("jit", "onnx", "int8") if (b, points[0]) in runners]
    v1, v32 = {}, {}
    for p in points:
        for th in (1, 2):
            v1[("eager", p.name, th)] = eager_call(p, th)
            for b in fast_backends:
                v1[(b, p.name, th)] = fast_call(b, p, th)
        v1[("bf16", p.name, 1)] = eager_call(p, 1, bf16=True)
        v1[("gemms-only", p.name, 1)] = gemms_only(p, 1)
        v32[("eager", p.name, 2)] = eager_call(p, 2)
        v32[("eager", p.name, 1)] = eager_call(p, 1)
        for b in fast_backends:
            v32[(b, p.name, 2)] = fast_call(b, p, 2)
        for b in ("onnx", "int8"):
            if b in fast_backends:
                v32[(b, p.name, 1)] = fast_call(b, p, 1)
        v32[("bf16", p.name, 2)] = eager_call(p, 2, bf16=True)
    ve2e = {}
    for p in (points[0], points[-1]):
        for b in ["eager"] + fast_backends:
            ve2e[(b, p.name, 1)] = e2e(p, b, 1)
    serving = "onnx" if "onnx" in fast_backends else "jit"  # what backend="auto" runs
    vx = {(n, p.name, th): fast_call(serving, p, th) for n in bx for p in (points[0], points[-1]) for th in (1, 2)}
    full = points[0]
    vp = {("eager", full.name, 2): eager_call(full, 2), ("bf16", full.name, 2): eager_call(full, 2, bf16=True)}
    if "onnx" in fast_backends:
        vp[("onnx", full.name, 2)] = fast_call("onnx", full, 2)

    a32 = torch.randn(2048, 2048)
    a16 = torch.randn(512, 512).to(torch.bfloat16)  # bf16 GEMM is very slow on this AVX2-only CPU

    def mm_rate(threads, bf16):
        torch.set_num_threads(threads)
        a = a16 if bf16 else a32
        n = a.shape[0]
        t = time.perf_counter()
        a @ a
        return 2 * n ** 3 / (time.perf_counter() - t) / 1e9

    rates = {k: [] for k in ("fp32 1T", "fp32 2T", "bf16 1T", "bf16 2T")}

    def sample_rates(keys):
        for key in keys:
            rates[key].append(mm_rate(int(key[-2]), key.startswith("bf16")))

    def timed(fn, arg, into):
        t = time.perf_counter()
        fn(arg)
        into.append(time.perf_counter() - t)

    T1 = {k: [] for k in v1}
    TE = {k: [] for k in ve2e}
    T32 = {k: [] for k in v32}
    TP = {k: [] for k in vp}
    TX = {k: [] for k in vx}
    with torch.inference_mode():
        for f in list(v1.values()):
            f(b1[0])
        for _k, f in v32.items():
            f(b32[0])
        for f in ve2e.values():
            f(questions[0])
        t0 = time.time()
        for r in range(args.rounds):
            items = [("1", k) for k in v1] + [("e", k) for k in ve2e]
            rng.shuffle(items)
            for kind, k in items:
                if kind == "1":
                    timed(v1[k], b1[r], T1[k])
                else:
                    timed(ve2e[k], questions[r], TE[k])
            if r % 10 == 0:
                sample_rates(rates)
        print(f"batch-1 rounds done in {time.time() - t0:.0f}s", flush=True)
        for r in range(args.batches):
            keys = [k for k in v32 if k[0] != "bf16" or r < 3]  # bf16: 3 rounds are enough (it is slow)
            rng.shuffle(keys)
            for k in keys:
                timed(v32[k], b32[r % len(b32)], T32[k])
            sample_rates(rates)
        print(f"batch-32 rounds done in {time.time() - t0:.0f}s", flush=True)
        for r in range(args.thread_rounds):
            keys = list(vx)
            rng.shuffle(keys)
            for k in keys:
                timed(vx[k], bx[k[0]][r % 3], TX[k])
        print(f"thread sweep done in {time.time() - t0:.0f}s", flush=True)
        for r in range(args.passage_rounds):
            keys = list(vp)
            rng.shuffle(keys)
            for k in keys:
                timed(vp[k], bp[r], TP[k])
            sample_rates(("fp32 2T", "bf16 2T"))
    torch.set_num_threads(2)
    rate = {k: med(v) for k, v in rates.items()}
    seq32 = med([float(b[0].shape[1]) for b in b32])
    seqp = med([float(b[0].shape[1]) for b in bp])

    def floor_ms(p, seq, n, threads, bf16=False):
        r = rate[f"{'bf16' if bf16 else 'fp32'} {threads}T"]
        return enc.space.flops(enc.space.validate(p), int(round(seq))) * n / (r * 1e9) * 1e3

    res = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count(),
                       "loadavg": os.getloadavg()},
           "matmul_gflops": rate, "batch1_tokens_median": tok1, "batch32_padded_len_median": seq32,
           "passage_padded_len": seqp, "build_s": build, "batch1": {}, "e2e": {}, "batch32": {}, "passages": {},
           "threads_by_batch": {"backend": serving}}
    for (b, p, th), ts in T1.items():
        fl = floor_ms(p, tok1, 1, th, b == "bf16")
        res["batch1"][f"{b} {p} {th}T"] = {"median_ms": med(ts) * 1e3, "p90_ms": float(np.percentile(ts, 90)) * 1e3,
                                           "floor_ms": fl, "x_floor": med(ts) * 1e3 / fl}
    for (b, p, th), ts in TE.items():
        res["e2e"][f"{b} {p} {th}T"] = {"median_ms": med(ts) * 1e3}
    for (b, p, th), ts in T32.items():
        fl = floor_ms(p, seq32, 32, th, b == "bf16")
        res["batch32"][f"{b} {p} {th}T"] = {"median_ms": med(ts) * 1e3, "qps": 32 / med(ts), "floor_ms": fl,
                                            "x_floor": med(ts) * 1e3 / fl, "n": len(ts)}
    for (b, p, th), ts in TP.items():
        fl = floor_ms(p, seqp, 16, th, b == "bf16")
        res["passages"][f"{b} {p} {th}T"] = {"median_ms": med(ts) * 1e3, "per_s": 16 / med(ts), "floor_ms": fl,
                                             "pct_of_floor_rate": 100 * fl / (med(ts) * 1e3)}
    for (n, p, th), ts in TX.items():
        if th == 1:
            one, two = med(ts) * 1e3, med(TX[(n, p, 2)]) * 1e3
            res["threads_by_batch"][f"{p} batch {n}"] = {"1T_ms": one, "2T_ms": two, "2T_speedup": one / two}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
