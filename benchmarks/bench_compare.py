"""Issue 7: one elastic model against static per-point baselines, plain truncation, the 2D Matryoshka
peer and BM25, on every sample collection.

Every dense method except the peer searches the SAME document vectors: the untrained
all-MiniLM-L6-v2 full model's, encoded once per collection (cached), cut to the point's width and
re-normalised. The peer trains both towers, so its passages are re-encoded by the peer itself at
each depth (widths are prefixes of one encoding); that cost is measured and reported.

    ELASTICDENSER_DATA=../shared/data .venv/bin/python benchmarks/bench_compare.py \\
        --elastic runs/t4-sandwich/model --static runs/static-*/model --peer runs/peer/model \\
        --docs nq-sample=runs/doc-cache/docs-1f343b11461d862331b4.npy --out benchmarks/results/compare

Writes ``compare.json`` (every figure), ``compare.md`` (the tables for BENCHMARKS.md) and
``compare-<collection>.png`` (nDCG@10 against batch-1 query latency, Pareto frontier per method).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from elasticdenser.operating_point import truncate

METRICS = ["ndcg@10", "mrr@10", "recall@20", "recall@100"]
ANSWER_KS = (20, 100)


def _norm(x: np.ndarray) -> np.ndarray:
    """Every method compared here is a normalising model: the width rule with normalize=True."""
    return np.ascontiguousarray(truncate(x, x.shape[1], normalize=True))


class Collection:
    """One collection's judged queries, passages, cached document vectors and searches."""

    def __init__(self, name: str, data_dir: Optional[str], cache: Path, max_length: int, max_queries: Optional[int] = None):
        import elasticdenser.data as data

        self.name = name
        self.coll = data.load_collection(name, data_dir=data_dir)
        self.queries = [q for q in self.coll.queries if q.query_id in self.coll.qrels and q.text.strip()][:max_queries]
        self.qrels = {q.query_id: dict(self.coll.qrels[q.query_id]) for q in self.queries}
        self.doc_ids = self.coll.corpus.doc_ids()
        self.cache = cache
        self.max_length = max_length
        self.answers = {q.query_id: q.answers for q in self.queries if q.answers}
        self._tokens: Dict[int, tuple] = {}

    def doc_vectors(self, encoder, point, tag: str) -> np.ndarray:
        """Passage vectors of ``encoder`` at ``point`` (full width), cached as .npy by model fingerprint."""
        from elasticdenser.atomic import atomic_path, write_text

        path = self.cache / f"{self.name}-{tag}-{encoder.fingerprint()[:16]}-{point.name}-{self.max_length}.npy"
        if not path.is_file():
            t = time.time()
            emb = encoder.encode([d.contents for d in self.coll.corpus], point, batch_size=64,
                                 max_length=self.max_length, progress=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb)
            write_text(path.with_suffix(".seconds"), f"{time.time() - t:.1f}")
        return np.load(path)

    def encode_seconds(self, encoder, point, tag: str) -> Optional[float]:
        p = self.cache / f"{self.name}-{tag}-{encoder.fingerprint()[:16]}-{point.name}-{self.max_length}.seconds"
        return float(p.read_text()) if p.is_file() else None

    def search(self, q: np.ndarray, docs: np.ndarray, width: int, k: int = 100):
        import faiss

        index = faiss.IndexFlatIP(width)
        index.add(_norm(docs[:, :width]))
        scores, rows = index.search(_norm(q[:, :width]), k)
        return self._result(scores, rows)

    def _result(self, scores, rows) -> dict:
        run = {q.query_id: {self.doc_ids[r]: float(s) for s, r in zip(srow, rrow) if r >= 0}
               for q, srow, rrow in zip(self.queries, scores, rows)}
        ranked = {q.query_id: [int(r) for r in rrow if r >= 0] for q, rrow in zip(self.queries, rows)}
        return {"run": run, "ranked": ranked}

    def evaluate(self, result: dict, name: str) -> dict:
        from elasticdenser.eval import answers as ans
        from elasticdenser.eval.evaluate import answer_accuracy
        from elasticdenser.eval.metrics import evaluate, make_run

        run = make_run(result["run"], name=name)
        row = {m: round(v, 4) for m, v in evaluate(self.qrels, run, METRICS).items()}
        if self.answers:
            def tokens(r: int):
                if r not in self._tokens:
                    self._tokens[r] = tuple(ans.tokens(self.coll.corpus.get(self.doc_ids[r]).text))
                return self._tokens[r]

            acc = answer_accuracy({q: result["ranked"][q] for q in self.answers}, self.answers, tokens, ANSWER_KS)
            row.update({m: round(v, 4) for m, v in acc.items()})
        result["ranx"] = run
        return row


def bm25(c: Collection, k: int = 100) -> dict:
    """bm25s (Lucene BM25, k1 1.5, b 0.75, English stopwords) -- the lexical anchor."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d.contents for d in c.coll.corpus], show_progress=False), show_progress=False)
    rows, scores = retriever.retrieve(bm25s.tokenize([q.text for q in c.queries], show_progress=False),
                                      k=min(k, len(c.doc_ids)), show_progress=False)
    return c._result(scores, rows)


def latency(encoder, point, texts: Sequence[str], rounds: int = 5, backend: str = "eager") -> Dict[str, float]:
    """Median batch-1 latency (ms) and batch-32 per-query time (ms) of query encoding, text in, fp32.

    ``backend="eager"`` is the reference path; ``"onnx"`` the serving fast path (issue 8), whose
    keys get an ``_onnx`` suffix.
    """
    b1, b32 = [], []
    encoder.encode(texts[:32], point, batch_size=32, max_length=64, backend=backend)  # warm-up (+ export)
    for _ in range(rounds):
        for t in texts[:20]:
            s = time.perf_counter()
            encoder.encode([t], point, batch_size=1, max_length=64, backend=backend)
            b1.append(time.perf_counter() - s)
        s = time.perf_counter()
        encoder.encode(texts[:32], point, batch_size=32, max_length=64, backend=backend)
        b32.append((time.perf_counter() - s) / 32)
    suffix = "" if backend == "eager" else f"_{backend}"
    return {f"batch1_ms{suffix}": round(1000 * statistics.median(b1), 2),
            f"batch32_ms_per_query{suffix}": round(1000 * statistics.median(b32), 3)}


def significance(c: Collection, a: dict, b: dict) -> Dict[str, float]:
    from elasticdenser.eval.metrics import compare

    rep = compare(c.qrels, [a["ranx"], b["ranx"]], metrics=["ndcg@10", "mrr@10"], stat_test="student").to_dict()
    names = rep["model_names"]
    return {m: round(float(rep[names[0]]["comparisons"][names[1]][m]), 5) for m in ["ndcg@10", "mrr@10"]}


def model_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def pareto(points: List[tuple]) -> List[tuple]:
    """(latency, quality) pairs not beaten on both by another pair, by latency."""
    out, best = [], -1.0
    for lat, q in sorted(points):
        if q > best:
            out.append((lat, q))
            best = q
    return out


def plot(rows: List[dict], collection: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    key = "batch1_ms_onnx" if any(r.get("batch1_ms_onnx") for r in rows) else "batch1_ms"
    for method, marker in [("elastic", "o"), ("static", "s"), ("truncation", "x"), ("peer", "^")]:
        pts = [(r[key], r["ndcg@10"]) for r in rows if r["method"] == method and r.get(key)]
        if not pts:
            continue
        ax.scatter(*zip(*pts), marker=marker, label=method)
        ax.plot(*zip(*pareto(pts)), alpha=0.5)
    bm = next((r for r in rows if r["method"] == "bm25"), None)
    if bm:
        ax.axhline(bm["ndcg@10"], ls="--", c="grey", label="BM25 (bm25s)")
    ax.set_xlabel(f"query latency, batch 1 (ms, {'ONNX Runtime' if key.endswith('onnx') else 'eager'} fp32, text in)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{collection}: quality vs query cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elastic", required=True, help="trained elastic model dir")
    ap.add_argument("--static", nargs="*", default=[], help="model dirs of static runs (their point from the run summary)")
    ap.add_argument("--peer", help="2D Matryoshka peer (sentence-transformers dir)")
    ap.add_argument("--collections", nargs="+", default=["nq-sample", "squad-sample", "scifact", "trec-dl"])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--docs", nargs="*", default=[], metavar="COLLECTION=NPY",
                    help="already computed full-model passage vectors (same order, same max length)")
    ap.add_argument("--cache", default="runs/compare-cache")
    ap.add_argument("--out", default="benchmarks/results/compare")
    ap.add_argument("--peer-max-docs", type=int, default=10000,
                    help="skip the peer on larger corpora (its per-depth re-encoding is the cost)")
    ap.add_argument("--doc-max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-queries", type=int, default=None, help="first N judged queries only (a quick look)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from elasticdenser.atomic import write_json, write_text
    from elasticdenser.index.faiss_index import tune_faiss
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.operating_point import OperatingPoint

    cache, out = Path(args.cache), Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    start = ElasticEncoder.from_pretrained(None).eval()  # document tower and plain-truncation model
    elastic = ElasticEncoder.from_pretrained(args.elastic).eval()
    points = elastic.space.default_points()
    tune_faiss(elastic.space.hidden_size)
    static = {}
    for d in args.static:
        summary = json.loads((Path(d).parent / "training_summary.json").read_text())
        (name,) = [p for p in summary["points"] if p != elastic.space.full.name]
        static[name] = (ElasticEncoder.from_pretrained(d).eval(), summary)
    peer = ElasticEncoder.from_pretrained(args.peer).eval() if args.peer else None
    full = elastic.space.full

    def peer_point(p: OperatingPoint) -> OperatingPoint:  # same depth and width, every head and neuron
        return OperatingPoint(p.layers, full.heads, full.ffn, p.width)

    given = dict(s.split("=", 1) for s in args.docs)
    report: Dict[str, object] = {"command": " ".join([sys.executable] + sys.argv), "threads": args.threads,
                                 "collections": {}, "latency": {}}
    lat_texts = None
    md = []
    for name in args.collections:
        t_coll = time.time()
        c = Collection(name, args.data_dir, cache, args.doc_max_length, args.max_queries)
        print(f"== {name}: {len(c.doc_ids)} passages, {len(c.queries)} judged queries", flush=True)
        if lat_texts is None:
            lat_texts = [q.text for q in c.queries[:64]]
        if name in given:
            docs = np.load(given[name])
        else:
            docs = c.doc_vectors(start, full, "start")
        if docs.shape[0] != len(c.doc_ids):
            raise SystemExit(f"{name}: {docs.shape[0]} passage vectors for {len(c.doc_ids)} passages")
        rows, results = [], {}

        def run_dense(method: str, enc, p: OperatingPoint, doc_vecs: np.ndarray, shape: OperatingPoint,
                      c=c, results=results, rows=rows) -> None:
            q = enc.encode([x.text for x in c.queries], p, batch_size=128, max_length=64)
            res = c.search(q, doc_vecs, p.width)
            row = {"method": method, "point": shape.name, "served_as": p.name,
                   "params_m": round(enc.point_params(p) / 1e6, 2), **c.evaluate(res, f"{method}:{p.name}")}
            results[(method, shape.name)] = res
            rows.append(row)
            print(f"  {method:10s} {p.name:20s} " + " ".join(f"{k}={v}" for k, v in row.items() if "@" in k), flush=True)

        for p in points:
            run_dense("elastic", elastic, p, docs, p)
            run_dense("truncation", start, p, docs, p)
            if p.name in static:
                run_dense("static", static[p.name][0], p, docs, p)
        if peer is not None and len(c.doc_ids) <= args.peer_max_docs:
            for layers in sorted({p.layers for p in points}, reverse=True):
                dp = OperatingPoint(layers, full.heads, full.ffn, full.width)
                pdocs = c.doc_vectors(peer, dp, "peer")
                for p in (p for p in points if p.layers == layers):
                    run_dense("peer", peer, peer_point(p), pdocs, p)
        res = bm25(c)
        results[("bm25", "-")] = res
        rows.append({"method": "bm25", "point": "-", "served_as": "bm25s", **c.evaluate(res, "bm25")})

        # the elastic model against the static model of the same shape (paired t-test over queries)
        for p in points:
            if p.name in static:
                sig = significance(c, results[("elastic", p.name)], results[("static", p.name)])
                for r in rows:
                    if r["method"] == "elastic" and r["point"] == p.name:
                        r["p_vs_static"] = sig
        ref = next(r for r in rows if r["method"] == "elastic" and r["point"] == full.name)
        for r in rows:
            r["kept_mrr@10"] = round(r["mrr@10"] / ref["mrr@10"], 4)
            r["kept_ndcg@10"] = round(r["ndcg@10"] / ref["ndcg@10"], 4)
            r["kept_recall@20"] = round(r["recall@20"] / ref["recall@20"], 4)
        peer_cost = {}
        if peer is not None:
            for layers in sorted({p.layers for p in points}, reverse=True):
                s = c.encode_seconds(peer, OperatingPoint(layers, full.heads, full.ffn, full.width), "peer")
                if s is not None:
                    peer_cost[f"L{layers}"] = s
        report["collections"][name] = {
            "passages": len(c.doc_ids), "queries": len(c.queries), "rows": rows,
            "document_encoding_s": {"start_model": c.encode_seconds(start, full, "start"), "peer_per_depth": peer_cost},
            "wall_s": round(time.time() - t_coll, 1),
        }

    # query latency per distinct shape (weights do not change it), interleaved, medians
    shapes = {("dense", p.name): (elastic, p) for p in points}
    if peer is not None:
        shapes.update({("peer", p.name): (peer, peer_point(p)) for p in points})
    lat: Dict[tuple, List[dict]] = {k: [] for k in shapes}
    import importlib.util

    backends = ["eager", "onnx"] if importlib.util.find_spec("onnxruntime") else ["eager"]
    for _ in range(3):
        for key, (enc, p) in shapes.items():
            m: Dict[str, float] = {}
            for backend in backends:
                m.update(latency(enc, p, lat_texts, rounds=2, backend=backend))
            lat[key].append(m)
    for key, vals in lat.items():
        report["latency"][f"{key[0]}:{key[1]}"] = {m: round(statistics.median(v[m] for v in vals), 3) for m in vals[0]}
    for _name, block in report["collections"].items():
        for r in block["rows"]:
            key = f"peer:{r['point']}" if r["method"] == "peer" else f"dense:{r['point']}"
            r.update(report["latency"].get(key, {}))

    # cost: training and serving memory
    elastic_summary = json.loads((Path(args.elastic).parent / "training_summary.json").read_text())
    report["training_s"] = {"elastic": elastic_summary.get("wall_time_s"),
                            "static": {n: s.get("wall_time_s") for n, (_, s) in static.items()}}
    if args.peer:
        report["training_s"]["peer"] = json.loads(
            (Path(args.peer).parent / "training_summary.json").read_text()).get("wall_time_s")
    report["serving_bytes"] = {
        "elastic_one_model": model_bytes(elastic.model),
        "static_models": {p.name: model_bytes(elastic.materialize(p)) for p in points},
    }
    for name, block in report["collections"].items():
        rows = block["rows"]
        plot(rows, name, out / f"compare-{name}.png")
        md.append(f"### {name} ({block['passages']:,} passages, {block['queries']:,} judged queries)\n")
        cols = ["method", "point", "ndcg@10", "mrr@10", "recall@20", "recall@100"] + \
               [f"answer@{k}" for k in ANSWER_KS if f"answer@{k}" in rows[0]] + \
               ["kept_mrr@10", "kept_ndcg@10", "kept_recall@20", "params_m", "batch1_ms", "batch32_ms_per_query",
                "batch1_ms_onnx", "batch32_ms_per_query_onnx", "p_vs_static"]
        md.append("| " + " | ".join(cols) + " |")
        md.append("|" + "---|" * len(cols))
        for r in rows:
            md.append("| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |")
        md.append("")
    write_json(out / "compare.json", report)
    write_text(out / "compare.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return ", ".join(f"{k} {x:.3g}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
