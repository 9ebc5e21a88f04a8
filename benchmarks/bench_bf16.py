"""bf16 where the CPU has it (issue 16, item 3): speed against the bf16 floor, and the correctness bar.

On a CPU with bf16 products (AVX512-BF16 or AMX; read at run time by ``cpu.native_bf16``) this
measures, in one process, interleaved (every round visits every variant in a fresh random order),
medians reported:

* the ``torch.mm`` rates (2048^3, fp32 and bf16, 1 and 2 threads): the floors; and on one thread
  at the shapes of the model's weight products for one OpenVINO stream's sub-batch;
* bulk passage encoding, full point, 512 random nq-sample passages per round, 2 threads, through
  ``encode`` as ``index`` calls it (sorted by length, batch 64, tokenisation included): ONNX
  Runtime fp32 (``index --precision fp32``), torch bf16 autocast (eager), and OpenVINO bf16
  (``index --precision auto`` there), as passages/s and as % of the bf16 floor: the strict one,
  ``ElasticSpace.flops`` of every passage at its own length (no padding) over the bf16 2-thread
  ``torch.mm`` rate of the same run;
* with ``--sub-batches``, the OpenVINO bf16 bulk path also at other rows per stream
  (``OpenVinoSession.SUB_BATCH``), interleaved with the rest;
* query batches per default point: ONNX Runtime fp32 vs OpenVINO bf16 at batch 1, 4, 8, 16 and 32,
  threads as the serving path picks them (1 thread up to 4 rows, else 2): the crossover that
  ``fastpath.AUTO_BF16_MIN_BATCH`` is set from;
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
from elasticdenser.model.openvino_session import OpenVinoSession


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


def shape_rates(rows: int, hidden: int, ffn: int, rounds: int = 30) -> dict:
    """bf16 / fp32 ``torch.mm`` rates on one thread at the shapes of the model's weight products for
    one stream's sub-batch (``rows`` tokens): how close to the 2048^3 rate the model's own GEMMs
    can run, so the floor's gap splits into GEMMs vs everything else."""
    torch.set_num_threads(1)
    shapes = {"qkvo": (rows, hidden, hidden), "ffn-in": (rows, hidden, ffn), "ffn-out": (rows, ffn, hidden)}
    out = {}
    for name, (m, k, n) in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - t)
            out[f"{name} {m}x{k}x{n} {'bf16' if dtype == torch.bfloat16 else 'fp32'} 1T"] = 2 * m * k * n / med(times) / 1e9
    return out


def node_profile(enc, texts, rounds: int = 20) -> dict:
    """Where one OpenVINO bf16 stream's time goes on 8 passages of 110-140 tokens (one thread, the
    full point): milliseconds per node type from OpenVINO's own counters (``PERF_COUNT``), against
    the wall time and the one-thread ``torch.mm`` bf16 rate."""
    import openvino as ov

    full = enc.default_points()[0]
    picked = [t for t in texts if 110 <= len(enc.tokenizer(t)["input_ids"]) <= 140][:8]
    b = enc.tokenizer(picked, padding=True, truncation=True, max_length=enc.max_length, return_tensors="np")
    feeds = {k: b[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model = fastpath.get_runner(enc, full, "openvino")._onnx
    core = ov.Core()
    source = model if isinstance(model, str) else core.read_model(model=model, weights=b"")
    request = core.compile_model(source, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": "bf16", "PERF_COUNT": True}).create_infer_request()
    for _ in range(3):
        request.infer(feeds)
    walls, nodes = [], {}
    for _ in range(rounds):
        t = time.perf_counter()
        request.infer(feeds)
        walls.append(time.perf_counter() - t)
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                key = f"{info.node_type} ({info.exec_type})"
                nodes[key] = nodes.get(key, 0.0) + info.real_time.total_seconds() * 1e3 / rounds
    flops = enc.space.flops(full, feeds["input_ids"].shape[1]) * len(picked)
    rate = mm_rates(3)["bf16 1T"]
    return {"shape": list(feeds["input_ids"].shape), "wall_ms": 1e3 * med(walls), "gflop": flops / 1e9,
            "floor_ms_at_bf16_1T": flops / (rate * 1e9) * 1e3, "torch_mm_bf16_1T_gflops": rate,
            "ms_by_node_type": dict(sorted(nodes.items(), key=lambda kv: -kv[1]))}


def run_cli(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "elasticdenser", *args], check=True)
    return time.perf_counter() - t


def cli_quality(data_dir: str, model: str | None) -> dict:
    """index nq-sample in fp32 and bf16, evaluate both at every default point (the user's path)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            exp = Path(tmp) / precision
            extra = ["--model", model] if model else []
            secs = run_cli("index", "nq-sample", "--data-dir", data_dir, "--out", str(exp), "--precision", precision,
                           "--no-progress", *extra)
            run_cli("evaluate", str(exp), "nq-sample", "--data-dir", data_dir, "--points", "default")
            rows = json.loads((exp / "metrics.json").read_text())["rows"]
            out[precision] = {"index_seconds": secs, "rows": rows}
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
    ap.add_argument("--passages", type=int, default=512, help="passages per bulk round")
    ap.add_argument("--passage-rounds", type=int, default=3)
    ap.add_argument("--query-rounds", type=int, default=30)
    ap.add_argument("--sub-batches", default="", help="also OpenVINO bf16 with these rows per stream "
                    "(OpenVinoSession.SUB_BATCH; comma-separated, each <= 32 at batch 64 over 2 streams)")
    ap.add_argument("--node-profile", action="store_true", help="only: where one bf16 stream's time goes, per node type")
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
    if args.node_profile:
        result["node_profile"] = node_profile(enc, [d.contents for d in coll.corpus])
        print(json.dumps(result["node_profile"], indent=1))
        return _save(result, args.out)
    n = args.passages
    docs = random.sample([d.contents for d in coll.corpus], n * args.passage_rounds)
    questions = [q.text for q in coll.queries][:32 * 8]

    def tok(texts, tensors):
        b = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors=tensors)
        return b["input_ids"], b["attention_mask"], b["token_type_ids"]

    passages = [docs[n * i : n * i + n] for i in range(args.passage_rounds)]  # n = --passages per round
    bulk = {"onnx fp32": {"backend": "onnx"}, "openvino bf16": {"backend": "openvino"},
            "eager bf16 autocast": {"backend": "eager", "bf16": True}}

    default_sub_batch = OpenVinoSession.SUB_BATCH
    sub_batch = {}  # variant -> rows per stream; every other variant runs the default
    for rows in [int(x) for x in args.sub_batches.split(",") if x.strip()]:
        if rows != default_sub_batch:
            sub_batch[f"openvino bf16, sub-batch {rows}"] = rows
            bulk[f"openvino bf16, sub-batch {rows}"] = {"backend": "openvino"}

    def encode(name, texts):  # what `index` runs: encode_texts -> encode(batch_size=64), sorted by length
        torch.set_num_threads(2)
        OpenVinoSession.SUB_BATCH = sub_batch.get(name, default_sub_batch)
        return enc.encode(texts, full, batch_size=64, **bulk[name])

    for name in bulk:
        encode(name, passages[0][:64])  # warm-up: sessions, graph compilation, oneDNN primitives
    times = {k: [] for k in bulk}
    vectors = {k: [] for k in bulk}
    rates = {f"{d} {t}T": [] for d in ("fp32", "bf16") for t in (1, 2)}
    for texts in passages:
        for k in random.sample(list(bulk), len(bulk)):
            t = time.perf_counter()
            vectors[k].append(encode(k, texts))
            times[k].append(time.perf_counter() - t)
        for k, v in mm_rates(1).items():
            rates[k].append(v)
    OpenVinoSession.SUB_BATCH = default_sub_batch  # the query section runs the default
    rate = {k: med(v) for k, v in rates.items()}
    # the strict floor: every passage's own tokens (no padding), at the bf16 matmul rate of this run
    lengths = [len(ids) for texts in passages for ids in enc.tokenizer(texts, truncation=True,
                                                                         max_length=enc.max_length)["input_ids"]]
    flops = sum(enc.space.flops(full, n_tok) for n_tok in lengths) / len(passages)
    floor_bf16, floor_fp32 = flops / (rate["bf16 2T"] * 1e9), flops / (rate["fp32 2T"] * 1e9)
    result["matmul_gflops"] = rate
    result["bulk"] = {"passages_per_round": n, "tokens_median": med(lengths), "floor_bf16_s": floor_bf16,
                      "floor_fp32_s": floor_fp32}
    for k, v in times.items():
        result["bulk"][k] = {"s": med(v), "passages_per_s": n / med(v), "pct_of_bf16_floor": 100 * floor_bf16 / med(v),
                             "pct_of_fp32_floor": 100 * floor_fp32 / med(v)}
    ref = np.concatenate([enc.encode(texts, full, batch_size=64, backend="eager") for texts in passages])
    space = enc.space
    result["bulk"]["gemm_gflops_at_model_shapes"] = shape_rates(
        default_sub_batch * int(med(lengths)), space.hidden_size, space.intermediate_size)
    result["bulk"]["cosine_min"] = {k: float(cos(np.concatenate(vectors[k]), ref).min())
                                    for k in ("openvino bf16", "eager bf16 autocast")}
    print(json.dumps(result["bulk"], indent=1), flush=True)

    # ---- query batches, every default point, threads as the serving path picks them (1 up to
    # fastpath.SMALL_BATCH rows, else 2): where "auto" should switch to bf16 (AUTO_BF16_MIN_BATCH)
    torch.set_num_threads(2)
    sizes = (1, 4, 8, 16, 32)
    qb = {n: [tok(questions[n * i : n * i + n], "np") for i in range(8)] for n in sizes}
    runners = {(b, p): fastpath.get_runner(enc, p, b) for b in ("onnx", "openvino") for p in points}
    calls = {(p.name, b, n): (lambda i, r=runners[(b, p)], n=n: r(*qb[n][i % 8]))
             for p in points for b in ("onnx", "openvino") for n in sizes}
    for f in calls.values():
        f(0)
    qt = {k: [] for k in calls}
    for i in range(args.query_rounds):
        for k in random.sample(list(calls), len(calls)):
            if k[2] >= 16 and i >= 16:
                continue  # large batches: fewer rounds (each is 10-150 ms)
            t = time.perf_counter()
            calls[k](i)
            qt[k].append(time.perf_counter() - t)
    result["queries"] = {}
    for p in points:
        got = enc.encode(questions, p, batch_size=32, backend="openvino")
        want = enc.encode(questions, p, batch_size=32, backend="eager")
        row = {"cosine_min": float(cos(got, want).min())}
        for n in sizes:
            o, v = med(qt[(p.name, "onnx", n)]) * 1e3, med(qt[(p.name, "openvino", n)]) * 1e3
            row[f"b{n}"] = {"onnx_fp32_ms": o, "openvino_bf16_ms": v, "speedup": o / v}
        result["queries"][p.name] = row
    print(json.dumps(result["queries"], indent=1), flush=True)
    if args.cli:
        result["cli"] = cli_quality(args.data_dir, args.model)
        print(json.dumps({k: v for k, v in result["cli"].items() if k not in ("fp32", "bf16")}, indent=1))
        print({p: result["cli"][p]["index_seconds"] for p in ("fp32", "bf16")})
    return _save(result, args.out)


def _save(result: dict, out) -> int:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
