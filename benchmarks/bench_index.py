"""Index-side benchmarks: corpus encoding throughput, index build time/size, search throughput.

    .venv/bin/python benchmarks/bench_index.py encode --n 512            # passages/s, fp32 vs bf16
    .venv/bin/python benchmarks/bench_index.py index --exp runs/nq-sample  # nq-sample size, real vectors
    .venv/bin/python benchmarks/bench_index.py index --exp runs/nq-sample --scale 1000000 --types 'Flat;IVF1024,PQ{m}' \
        --batches 1,1000 --small-batch-queries 50 --train-size 65536   # 1M vectors, short batch-1 timing
    .venv/bin/python benchmarks/bench_index.py blas --n 200000            # the BLAS-threshold trap
    .venv/bin/python benchmarks/bench_index.py kernel --n 4351 --batches 1,2,4,8,16   # sequential vs BLAS per batch

At ``--scale N`` the vectors are real nq-sample embeddings resampled with Gaussian noise (sigma 0.05
per dimension of unit vectors, then re-normalised), so the neighbourhood structure is realistic.
``{m}`` in a factory string becomes width/8 (PQ sub-quantisers of 8 dims). Results go to JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_encode(args) -> list:
    from elasticdenser.data import load_collection
    from elasticdenser.index.encode import encode_texts
    from elasticdenser.model.encoder import ElasticEncoder

    coll = load_collection("nq-sample", args.data_dir)
    texts = [coll.corpus[i].contents for i in range(0, len(coll.corpus), max(1, len(coll.corpus) // args.n))][: args.n]
    enc = ElasticEncoder.from_pretrained()
    encode_texts(enc, texts[:32], batch_size=32)  # warm-up
    out, ref = [], None
    for bf16 in (False, True):
        t0 = time.perf_counter()
        emb = encode_texts(enc, texts, batch_size=args.batch_size, bf16=bf16)
        dt = time.perf_counter() - t0
        row = {"bench": "encode", "dtype": "bf16" if bf16 else "fp32", "passages": len(texts), "seconds": round(dt, 2),
               "passages_per_s": round(len(texts) / dt, 1), "threads": __import__("torch").get_num_threads()}
        if bf16:
            row["cosine_vs_fp32_min"] = float(np.min(np.sum(emb * ref, axis=1)))
        else:
            ref = emb
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _vectors(args):
    from elasticdenser.operating_point import truncate

    base = np.load(Path(args.exp) / "embeddings.npy", mmap_mode="r")
    base = np.asarray(base, dtype=np.float32)
    if not args.scale or args.scale <= len(base):
        return base, base
    rng = np.random.default_rng(0)
    rows = np.empty((args.scale, base.shape[1]), dtype=np.float32)
    for lo in range(0, args.scale, 100000):
        hi = min(lo + 100000, args.scale)
        pick = rng.integers(0, len(base), hi - lo)
        rows[lo:hi] = truncate(base[pick] + 0.05 * rng.standard_normal((hi - lo, base.shape[1]), dtype=np.float32), base.shape[1])
    return rows, base


def bench_index(args) -> list:
    import faiss

    from elasticdenser.index import faiss_index as fi
    from elasticdenser.index.store import EmbeddingStore
    from elasticdenser.operating_point import truncate

    vecs, base = _vectors(args)
    fi.tune_faiss(base.shape[1])
    rng = np.random.default_rng(1)
    qrows = base[rng.integers(0, len(base), args.queries)]
    queries = truncate(qrows + 0.05 * rng.standard_normal(qrows.shape, dtype=np.float32), qrows.shape[1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    store_path = tmp / "embeddings.npy"
    s = EmbeddingStore.create(store_path, len(vecs), vecs.shape[1])
    s.array[:] = vecs
    s.flush()
    del s, vecs
    store = EmbeddingStore.open(store_path)
    out = []
    widths = [int(w) for w in args.widths.split(",")]
    for factory_t in args.types.split(";"):
        for w in widths:
            factory = factory_t.replace("{m}", str(w // 8))
            t0 = time.perf_counter()
            index = fi.build_index(store, w, factory, train_size=args.train_size)
            build_s = time.perf_counter() - t0
            size = fi.save_index(index, tmp / "ix.faiss")
            fi.set_search_params(index, fi.default_search_params(factory))
            q = truncate(queries, w)
            exact = None
            if factory != "Flat":
                flat = faiss.IndexFlatIP(w)
                for _, block in store.blocks(200000, width=w):
                    flat.add(block)
                exact = flat.search(q[:200], 10)[1]
                del flat
            row = {"bench": "index", "n": len(store), "width": w, "factory": factory, "build_s": round(build_s, 2),
                   "bytes": size, "mb": round(size / 1e6, 1)}
            for bs in [int(b) for b in args.batches.split(",")]:
                nq = min(len(q), 1000) if bs >= 1000 else min(len(q), args.small_batch_queries)
                qq = q[: max(bs, nq)]
                t0 = time.perf_counter()
                for lo in range(0, len(qq), bs):
                    index.search(qq[lo : lo + bs], 100)
                dt = time.perf_counter() - t0
                row[f"qps_b{bs}"] = round(len(qq) / dt, 1)
            if exact is not None:
                got = index.search(q[:200], 10)[1]
                row["recall10_vs_flat"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])), 3)
            print(json.dumps(row), flush=True)
            out.append(row)
            (tmp / "ix.faiss").unlink()
            del index
    store_path.unlink()
    return out


def bench_blas(args) -> list:
    import faiss

    rng = np.random.default_rng(0)
    out = []
    for d in (384, 192, 96):
        xb = rng.standard_normal((args.n, d), dtype=np.float32)
        faiss.normalize_L2(xb)
        xq = rng.standard_normal((1000, d), dtype=np.float32)
        faiss.normalize_L2(xq)
        index = faiss.IndexFlatIP(d)
        index.add(xb)
        for thr in (128000, 20):
            faiss.cvar.distance_compute_blas_threshold = thr
            for nq in (32, 1000):
                best = min(_timed(index.search, xq[:nq], 100) for _ in range(2))
                row = {"bench": "blas", "n": args.n, "d": d, "threshold": thr, "batch": nq, "ms": round(1000 * best, 1),
                       "qps": round(nq / best, 1)}
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def bench_kernel(args) -> list:
    """FAISS's two exact kernels at small batches, forced through its threshold (which 1.15 compares
    with query rows x width): the sequential scan and the BLAS product, interleaved, 1 thread, medians."""
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    out = []
    for d in [int(w) for w in args.widths.split(",")]:
        index = faiss.IndexFlatIP(d)
        index.add(rng.standard_normal((args.n, d), dtype=np.float32))
        for nq in [int(b) for b in args.batches.split(",")]:
            q = rng.standard_normal((nq, d), dtype=np.float32)
            times = {"sequential": [], "blas": []}
            for _ in range(args.rounds):
                for kernel in rng.permutation(list(times)):
                    faiss.cvar.distance_compute_blas_threshold = 1 << 30 if kernel == "sequential" else 1
                    times[kernel].append(_timed(index.search, q, 10))
            row = {"bench": "kernel", "n": args.n, "d": d, "batch": nq,
                   **{f"{k} ms": round(1000 * float(np.median(v)), 3) for k, v in times.items()}}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["encode", "index", "blas", "kernel"])
    p.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA", "../shared/data"))
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--exp", default="runs/nq-sample")
    p.add_argument("--scale", type=int, default=0)
    p.add_argument("--widths", default="384,256,192")
    p.add_argument("--types", default="Flat;HNSW32;IVF256,PQ{m}", help="';'-separated factory strings")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--train-size", type=int, default=100000)
    p.add_argument("--batches", default="1,32,1000", help="comma-separated search batch sizes")
    p.add_argument("--small-batch-queries", type=int, default=1000,
                   help="queries timed for batches < 1000 (fewer keeps batch-1 runs at 1M vectors short)")
    p.add_argument("--rounds", type=int, default=50, help="kernel: calls per kernel and batch")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = {"encode": bench_encode, "index": bench_index, "blas": bench_blas, "kernel": bench_kernel}[args.what](args)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
