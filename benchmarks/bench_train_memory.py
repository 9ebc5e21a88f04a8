"""Peak memory and step time of elastic training against a large document store (issue 14, part 3):
the exact path (every document in memory, every query scored against all of them) against the
memory-bounded path (``candidate_search: faiss``: the teacher's top-k from a FAISS IVF-PQ index, the
candidates' rows read from the memory-mapped store).

The store is ``--rows`` vectors resampled from a real experiment's embeddings (each a real
document vector plus small noise, re-normalised), written as an experiment (manifest, doc ids,
store, full-width index) so training runs through ``train(config)`` with ``experiment=`` exactly
as a user's run does. Each mode runs in its own process; peak RSS is that process's maximum.

    python benchmarks/bench_train_memory.py --source runs/adapt/scifact/base --rows 1000000 --steps 12
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def build_store(source: Path, work: Path, rows: int, factory: str) -> Path:
    import numpy as np

    from elasticdenser.index import encode as enc
    from elasticdenser.index import faiss_index as fi
    from elasticdenser.index import manifest as mf
    from elasticdenser.index.store import EmbeddingStore
    from elasticdenser.model.encoder import ElasticEncoder

    exp = work / f"store-{rows}"
    if (exp / mf.MANIFEST).is_file():
        return exp
    exp.mkdir(parents=True, exist_ok=True)
    real = np.load(source / enc.EMBEDDINGS, mmap_mode="r")
    rng = np.random.default_rng(0)
    store = EmbeddingStore.create(exp / enc.EMBEDDINGS, rows, real.shape[1])
    for lo in range(0, rows, 65536):
        n = min(65536, rows - lo)
        block = real[rng.integers(0, len(real), size=n)] + rng.normal(0, 0.02, size=(n, real.shape[1]))
        store.array[lo:lo + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    store.flush()
    (exp / enc.DOC_IDS).write_text("".join(f"d{i}\n" for i in range(rows)))
    encoder = ElasticEncoder.from_pretrained(None)
    m = mf.new_manifest(encoder, "resampled", rows, "float32")
    store = EmbeddingStore.open(exp / enc.EMBEDDINGS)
    t0 = time.time()
    index = fi.build_index(store, store.dim, factory, train_size=65536)
    fi.save_index(index, exp / fi.index_file(store.dim))
    m["indexes"] = {str(store.dim): {"file": fi.index_file(store.dim), "factory": factory, "ntotal": rows,
                                     "build_seconds": round(time.time() - t0, 1)}}
    mf.save(exp, m)
    return exp


def run_mode(exp: Path, source: Path, mode: str, steps: int, out: Path) -> dict:
    """One training run in this process (called in a child): ``train(config)`` on the store."""
    import statistics

    from elasticdenser.data import load_collection
    from elasticdenser.data.types import Collection, Corpus, Document
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.loop import METRICS_FILE, train

    texts = [d for d in load_collection(json.loads((source / "manifest.json").read_text())["collection"]["name"]).corpus]
    rows = json.loads((exp / "manifest.json").read_text())["collection"]["num_docs"]
    docs = [Document(f"d{i}", "", texts[i % len(texts)].text) for i in range(rows)]
    coll = Collection("resampled", Corpus(docs), [], {})
    bounded = dict(candidate_search="faiss", distill_candidates=64, sampled_negatives=256) if mode == "faiss" else {}
    cfg = TrainConfig(output_dir=str(out / mode), experiment=str(exp), collection="resampled", exclude=[],
                      sources=["pseudo"], pseudo_queries=2000, steps=steps, batch_size=16, sampling="sandwich",
                      num_random=1, lr=3e-4, warmup_steps=2, reorder=False, reorder_layers=False, eval_every=0,
                      checkpoint_every=0, log_every=1, use_collection_train=False, progress=False, **bounded)
    t0 = time.time()
    train(cfg, resume=False, collection=coll)
    records = [json.loads(line) for line in (out / mode / METRICS_FILE).read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in records if r.get("type") == "train"]
    step_s = [b - a for a, b in zip(elapsed, elapsed[1:])][1:]  # first step includes warm-up
    return {"mode": mode, "rows": rows, "steps": steps, "wall_s": round(time.time() - t0, 1),
            "median_step_s": round(statistics.median(step_s), 3) if step_s else None,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="an experiment whose real embeddings are resampled")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--factory", default="IVF1024,PQ48")
    ap.add_argument("--work", default="runs/bench-train-memory")
    ap.add_argument("--modes", default="faiss,exact")
    ap.add_argument("--results", default="benchmarks/results/train-memory.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work, source = Path(args.work), Path(args.source)
    if args.child:
        exp = build_store(source, work, args.rows, args.factory)
        print(json.dumps(run_mode(exp, source, args.child, args.steps, work)))
        return 0
    build_store(source, work, args.rows, args.factory)
    results = []
    for mode in args.modes.split(","):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", mode], capture_output=True, text=True,
                              env=dict(os.environ))
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
