"""Where a query's time goes on the serving path, text in -> hits out (issue 16, item 2).

For the full point and the smallest default point of an experiment, on the serving backend
(``Searcher.open(..., backend="auto")``), every stage of ``Searcher.search(query, k=10, point=P)``
timed on its own, plus the whole call, plus the server's JSON body of the result:

``tokenise`` (the fast tokenizer's backend, as ``encode`` runs it), ``runner`` (``fastpath.get_runner``:
the cached runner and the check that no weight changed since it was built, run on every encode),
``model`` (the fast runner: session call, pooling, normalisation), ``encode`` (``Searcher.encode``:
tokenise + model + the searcher's checks),
``faiss`` (``faiss_index.search`` of one vector at the point's width), ``hits`` (row -> ``Hit``
with the passage from the docstore), ``search`` (the public call), ``json`` (``/search``'s body).
``not the model`` = ``search`` - ``model``. Interleaved: every round visits every (point, stage)
in a fresh random order over one real question; medians. CPU flags are recorded with the figures.

``--batch N`` (default 1) sends N questions per call: ``search`` is then ``search_texts`` (what the
server runs for a batch), every stage runs on the N questions (``faiss`` on N vectors, ``hits`` for
N x 10 rows), and ``model`` runs on the runner ``encode`` picks for that size.

``--burst N`` (default 1) runs each visit as N consecutive calls on N questions and keeps the last
N - 1: the steady state of a service that stays at one point, as the router holds a point for a
whole window. With N = 1 every call follows another point's or stage's, whose weights and vectors
have pushed this one's out of the CPU caches. ``--stages search,model`` times only those (the FAISS
stages on all OpenMP threads leave spinning workers that slow whatever runs next on 2 cores).

    HF_HUB_OFFLINE=1 python benchmarks/bench_query_path.py --exp runs/nq-sample-main13 \\
        --out benchmarks/results/query_path.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

STAGES = ("tokenise", "runner", "model", "encode", "faiss", "hits", "search", "json")
#: FAISS at batch 1 and 32 under its thread rule (``faiss_index.search``) vs all OpenMP threads, and
#: the same exact batch-1 top 10 as one numpy matrix-vector product (a reference, not a path of ours)
FAISS_THREADS = ("faiss b1 omp", "faiss b32 rule", "faiss b32 omp", "numpy matvec b1")


def stage_functions(searcher, point, batch: int = 1):
    """``{stage: f(questions)}`` for one point; each runs exactly what that stage runs in ``search``
    (``batch`` > 1: in ``search_texts`` over that many questions)."""
    from elasticdenser.index import faiss_index as fi
    from elasticdenser.model import fastpath
    from elasticdenser.model.batch_tokenizer import length_batches
    from elasticdenser.serve.server import _hit_json

    enc = searcher.encoder
    runner = fastpath.get_runner(enc, point, searcher.backend or "auto")
    if fastpath._auto_bf16(searcher.backend or "auto", batch, 32):  # encode_fast's runner for this batch
        runner = fastpath.get_runner(enc, point, "openvino")
    tensors = "np" if runner.backend in fastpath._GRAPH else "pt"
    index = searcher.index(point.width)
    vec = np.repeat(searcher.encode(["warm up"], point), batch, axis=0)
    vec32 = np.repeat(vec[:1], 32, axis=0)
    stored = index.reconstruct_n(0, index.ntotal) if hasattr(index, "reconstruct_n") else None
    _, rows = fi.search(index, vec, 10)
    results = [searcher.search("warm up", k=10, point=point).hits] * batch
    def tokenise(qs):  # what encode runs: the batch tokenised, its rows longest first
        return next(length_batches(enc, qs, enc.max_length, len(qs), tensors))[1]

    batches = {}

    def model(qs):
        b = batches.get(tuple(qs))
        if b is None:
            b = batches[tuple(qs)] = tokenise(qs)
        return runner(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))

    def search(qs):
        return searcher.search(qs[0], k=10, point=point) if batch == 1 else searcher.search_texts(qs, k=10, point=point)

    return {
        "tokenise": tokenise,
        "runner": lambda qs: fastpath.get_runner(enc, point, searcher.backend or "auto"),
        "model": model,
        "encode": lambda qs: searcher.encode(qs, point),
        "faiss": lambda qs: fi.search(index, vec, 10),
        "hits": lambda qs: [[searcher._hit(int(r), 0.5) for r in row if r >= 0] for row in rows],
        "search": search,
        "json": lambda qs: [json.dumps({"query": q, "point": point.name, "hits": [_hit_json(h) for h in hits]})
                            for q, hits in zip(qs, results)],
        "faiss b1 omp": lambda qs: index.search(vec[:1], 10),
        "faiss b32 rule": lambda qs: fi.search(index, vec32, 10),
        "faiss b32 omp": lambda qs: index.search(vec32, 10),
        # not a path of ours: what the same exact top 10 costs as one BLAS matrix-vector product
        "numpy matvec b1": lambda qs: np.argpartition(-(stored @ vec[0]), 10)[:10],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an indexed experiment (its query model and its indexes)")
    ap.add_argument("--collection", default="nq-sample", help="where the questions come from")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--points", default="full,smallest", help="points to time (names, full, smallest)")
    ap.add_argument("--burst", type=int, default=1, help="consecutive calls per visit; the first is not kept when > 1")
    ap.add_argument("--batch", type=int, default=1, help="questions per call (> 1: search_texts, as the server batches)")
    ap.add_argument("--stages", default=",".join(STAGES + FAISS_THREADS), help="stages to time (default: all)")
    ap.add_argument("--small-batch-threads", type=int, default=None,
                    help="threads for batches of up to fastpath.SMALL_BATCH rows (default: each runner measures "
                         "which of 1 and all is faster; the choice is recorded as 'threads at batch 1')")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from elasticdenser import Searcher
    from elasticdenser.data import load_collection
    from elasticdenser.model import fastpath
    from elasticdenser.model.cpu import cpu_features

    if args.small_batch_threads:
        fastpath.small_batch_threads = args.small_batch_threads

    searcher = Searcher.open(args.exp, backend="auto")
    defaults = searcher.encoder.default_points()
    names = {"full": defaults[0], "smallest": defaults[-1]}
    points = [names.get(n) or searcher.resolve_point(n) for n in args.points.split(",") if n]
    questions = [q.text for q in load_collection(args.collection, args.data_dir).queries]
    batch = max(1, args.batch)
    fns = {p.name: stage_functions(searcher, p, batch) for p in points}
    rng = random.Random(0)
    stages = [s for s in STAGES + FAISS_THREADS if s in args.stages.split(",")]
    samples = {(p.name, s): [] for p in points for s in stages}
    burst = max(1, args.burst)
    for _ in range(args.rounds):
        qs = [rng.sample(questions, batch) for _ in range(burst)]  # the same questions for every (point, stage)
        keys = list(samples)
        rng.shuffle(keys)
        for key in keys:
            f = fns[key[0]][key[1]]
            for call, texts in enumerate(qs):
                t0 = time.perf_counter()
                f(texts)
                if call or burst == 1:
                    samples[key].append(time.perf_counter() - t0)
    import faiss

    res = {"exp": args.exp, "rounds": args.rounds, "burst": burst, "batch": batch, "omp_threads": faiss.omp_get_max_threads(),
           "small_batch_threads": fastpath.small_batch_threads,
           "backend": searcher.backend, "cpu": cpu_features(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "points": {}}
    for p in points:
        ms = {s: 1e3 * statistics.median(samples[(p.name, s)]) for s in stages}
        if "search" in ms and "model" in ms:
            ms["not the model"] = ms["search"] - ms["model"]
        res["points"][p.name] = {k: round(v, 4) for k, v in ms.items()}
        runner = fastpath.get_runner(searcher.encoder, p, searcher.backend or "auto")
        res["points"][p.name]["threads at batch 1"] = runner.threads_for(1)  # measured or fixed
    full, small = points[0].name, points[-1].name
    for s in ("search", "model"):
        if s in stages:
            res[f"{s}_ratio"] = round(res["points"][full][s] / res["points"][small][s], 3)
    lines = [f"| stage (median ms, batch {batch}, burst {burst}) | " + " | ".join(p.name for p in points) + " |",
             "|---|" + "---:|" * len(points)]
    for s in res["points"][full]:
        lines.append(f"| {s} | " + " | ".join(f"{res['points'][p.name][s]:.4g}" for p in points) + " |")
    print("\n".join(lines))
    print(f"full / smallest: search {res.get('search_ratio')}x, model call {res.get('model_ratio')}x")
    print(f"cpu {res['cpu']['summary']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
