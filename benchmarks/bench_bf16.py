"""bf16 where the CPU has it (issue 16, item 3): speed against the bf16 floor, and the correctness bar.

On a CPU with bf16 products (AVX512-BF16 or AMX; read at run time by ``cpu.native_bf16``) this
measures, in one process, interleaved (every round visits every variant in a fresh random order),
medians reported:

* the ``torch.mm`` rates (2048^3, fp32 and bf16, 1 and 2 threads): the floors;
* bulk passage encoding, full point, batch 32 of real nq-sample passages, 2 threads: ONNX Runtime
  fp32 (``index --precision fp32``), torch bf16 autocast (eager), and OpenVINO bf16
  (``index --precision auto`` there), as passages/s and as % of the bf16 floor
  (``ElasticSpace.flops`` at the padded length / the bf16 2-thread matmul rate of the same run);
* query batches per default point: ONNX Runtime fp32 vs OpenVINO bf16, batch 1 (1 thread) and
  batch 32 (2 threads);
* cosine of every bf16 vector to the eager fp32 reference (passages and queries, every point).

``--cli`` adds the quality through the path a user runs: ``elasticdenser index nq-sample`` with
``--precision fp32`` and ``--precision bf16`` (wall time of each), then ``elasticdenser evaluate`` on
both, and the per-point metric differences (the bar: within 0.002).

On a CPU without bf16 products it records the matmul rates, says that bf16 is not measurable here,
and stops: the code keeps fp32 there.

    python benchmarks/bench_bf16.py --cli --out benchmarks/results/bf16.json     # ~12 min with --cli
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from elasticdenser.data import load_collection
from elasticdenser.model import fastpath
from elasticdenser.model.cpu import cpu_features, native_bf16
from elasticdenser.model.encoder import ElasticEncoder


def med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def mm_rates(rounds: int) -> dict:
    a32 = torch.randn(2048, 2048)
    a16 = a32.to(torch.bfloat16)
    out = {f"{d} {t}T": [] for d in ("fp32", "bf16") for t in (1, 2)}
    for _ in range(rounds):
        for key in random.sample(list(out), len(out)):
            torch.set_num_threads(int(key[-2]))
            a = a16 if key.startswith("bf16") else a32
            t = time.perf_counter()
            a @ a
            out[key].append(2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9)
    return {k: med(v) for k, v in out.items()}


def run_cli(*args: str) -> tuple:
    """Run ``elasticdenser ARGS``; (wall seconds, peak RSS in GB) of that process alone."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "elasticdenser", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"elasticdenser {' '.join(args)} failed")
    return time.perf_counter() - t, usage.ru_maxrss / 1e6


def cli_quality(data_dir: str, model: str | None) -> dict:
    """index nq-sample in fp32 and bf16, evaluate both at every default point (the user's path)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            exp = Path(tmp) / precision
            extra = ["--model", model] if model else []
            secs, rss = run_cli("index", "nq-sample", "--data-dir", data_dir, "--out", str(exp), "--precision", precision,
                           "--no-progress", *extra)
            run_cli("evaluate", str(exp), "nq-sample", "--data-dir", data_dir, "--points", "default")
            rows = json.loads((exp / "metrics.json").read_text())["rows"]
            out[precision] = {"index_seconds": secs, "index_peak_rss_gb": rss, "rows": rows}
    deltas = {}
    for a, b in zip(out["fp32"]["rows"], out["bf16"]["rows"]):
        deltas[a["point"]] = {m: round(b[m] - a[m], 4) for m in ("mrr@10", "ndcg@10", "recall@100")}
    out["delta_bf16_minus_fp32"] = deltas
    out["max_abs_delta"] = max(abs(v) for d in deltas.values() for k, v in d.items() if k != "recall@100")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA", "/work/shared/data"))
    ap.add_argument("--model", default=None, help="model directory (default all-MiniLM-L6-v2)")
    ap.add_argument("--passage-rounds", type=int, default=6)
    ap.add_argument("--query-rounds", type=int, default=30)
    ap.add_argument("--cli", action="store_true", help="also index + evaluate nq-sample in fp32 and bf16 via the CLI")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    random.seed(0)
    torch.manual_seed(0)
    cpu = cpu_features()
    result = {"cpu": cpu["summary"], "native_bf16": native_bf16(), "torch": torch.__version__}
    print(f"CPU: {cpu['summary']}", flush=True)
    if not native_bf16() or "openvino" not in fastpath.available_backends():
        result["matmul_gflops"] = mm_rates(5)
        result["verdict"] = ("not measurable: this CPU has no bf16 products (bf16 would be emulated); fp32 kept"
                             if not native_bf16() else "openvino not installed: bf16 runs torch autocast only")
        print(json.dumps(result, indent=1))
        return _save(result, args.out)

    os.environ.setdefault("ELASTICDENSER_CACHE", "off")
    enc = ElasticEncoder.from_pretrained(args.model)
    points = enc.default_points()
    full = points[0]
    coll = load_collection("nq-sample", args.data_dir)
    docs = random.sample([d.contents for d in coll.corpus], 32 * args.passage_rounds)
    questions = [q.text for q in coll.queries][:32 * 8]

    def tok(texts, tensors):
        b = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors=tensors)
        return b["input_ids"], b["attention_mask"], b["token_type_ids"]

    passages = [docs[32 * i : 32 * i + 32] for i in range(args.passage_rounds)]
    pnp = [tok(b, "np") for b in passages]
    ppt = [tok(b, "pt") for b in passages]
    runners = {(b, p): fastpath.get_runner(enc, p, b) for b in ("onnx", "openvino") for p in points}
    eager = enc.serving_module(full) or (lambda i, m, t: enc.forward(i, m, full, t))

    def autocast_bf16(batch):
        torch.set_num_threads(2)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return eager(*batch).float().numpy()

    bulk = {"onnx fp32": lambda i: runners[("onnx", full)](*pnp[i], threads=2),
            "openvino bf16": lambda i: runners[("openvino", full)](*pnp[i], threads=2),
            "eager bf16 autocast": lambda i: autocast_bf16(ppt[i])}
    for f in bulk.values():
        f(0)  # warm-up: sessions, graph compilation, oneDNN primitives
    times = {k: [] for k in bulk}
    rates = {f"{d} {t}T": [] for d in ("fp32", "bf16") for t in (1, 2)}
    for i in range(args.passage_rounds):
        for k in random.sample(list(bulk), len(bulk)):
            t = time.perf_counter()
            bulk[k](i)
            times[k].append(time.perf_counter() - t)
        for k, v in mm_rates(1).items():
            rates[k].append(v)
    rate = {k: med(v) for k, v in rates.items()}
    seq = [int(b[1].sum(1).max()) for b in pnp]
    flops = [enc.space.flops(full, s) * len(b[0]) for s, b in zip(seq, pnp)]
    floor_bf16 = med([f / (rate["bf16 2T"] * 1e9) for f in flops])
    floor_fp32 = med([f / (rate["fp32 2T"] * 1e9) for f in flops])
    result["matmul_gflops"] = rate
    result["bulk"] = {"batch": 32, "padded_len_median": med(seq), "floor_bf16_ms": floor_bf16 * 1e3,
                      "floor_fp32_ms": floor_fp32 * 1e3}
    for k, v in times.items():
        result["bulk"][k] = {"ms": med(v) * 1e3, "passages_per_s": 32 / med(v),
                             "pct_of_bf16_floor": 100 * floor_bf16 / med(v), "pct_of_fp32_floor": 100 * floor_fp32 / med(v)}
    ref = np.concatenate([enc.encode(b, full, batch_size=32, backend="eager") for b in passages])
    result["bulk"]["cosine_min"] = {k: float(cos(np.concatenate([bulk[k](i) for i in range(len(pnp))]), ref).min())
                                    for k in ("openvino bf16", "eager bf16 autocast")}
    print(json.dumps(result["bulk"], indent=1), flush=True)

    # ---- query batches, every default point
    q1 = [tok([q], "np") for q in questions[: args.query_rounds]]
    q32 = [tok(questions[32 * i : 32 * i + 32], "np") for i in range(8)]
    calls = {}
    for p in points:
        for b in ("onnx", "openvino"):
            calls[(p.name, b, 1)] = lambda i, r=runners[(b, p)]: r(*q1[i % len(q1)], threads=1)
            calls[(p.name, b, 32)] = lambda i, r=runners[(b, p)]: r(*q32[i % len(q32)], threads=2)
    for f in calls.values():
        f(0)
    qt = {k: [] for k in calls}
    for i in range(args.query_rounds):
        for k in random.sample(list(calls), len(calls)):
            if k[2] == 32 and i >= 2 * len(q32):
                continue  # batch 32: fewer rounds (each is 30-150 ms)
            t = time.perf_counter()
            calls[k](i)
            qt[k].append(time.perf_counter() - t)
    result["queries"] = {}
    for p in points:
        got = enc.encode(questions, p, batch_size=32, backend="openvino")
        want = enc.encode(questions, p, batch_size=32, backend="eager")
        row = {"cosine_min": float(cos(got, want).min())}
        for n in (1, 32):
            o, v = med(qt[(p.name, "onnx", n)]) * 1e3, med(qt[(p.name, "openvino", n)]) * 1e3
            row[f"b{n}"] = {"onnx_fp32_ms": o, "openvino_bf16_ms": v, "speedup": o / v}
        result["queries"][p.name] = row
    print(json.dumps(result["queries"], indent=1), flush=True)
    if args.cli:
        result["cli"] = cli_quality(args.data_dir, args.model)
        print(json.dumps({k: v for k, v in result["cli"].items() if k not in ("fp32", "bf16")}, indent=1))
        print({p: (result["cli"][p]["index_seconds"], result["cli"][p]["index_peak_rss_gb"]) for p in ("fp32", "bf16")})
    return _save(result, args.out)


def _save(result: dict, out) -> int:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
