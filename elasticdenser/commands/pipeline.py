"""``elasticdenser pipeline``: the main job, end to end on one collection.

load collection -> load encoder -> [elastic training, --train-steps] -> encode corpus once + one
index per width -> batch-search every operating point -> metrics table (printed, saved as
metrics.json / metrics.md in --out) -> [profile + discrete-event load simulation, --slo-ms].

The job is a list of stage functions, ``STAGES``, each ``stage(ctx) -> None`` reading and
writing the shared :class:`Context`, so a stage can be added by position.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from elasticdenser.commands._common import add_data_dir, add_device, add_out, add_precision, add_progress


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    collection: Any = None
    encoder: Any = None
    searcher: Any = None
    points: List[Any] = field(default_factory=list)
    rows: List[dict] = field(default_factory=list)
    runs: Dict[str, Any] = field(default_factory=dict)
    comparison: Any = None
    timings: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(msg, flush=True)  # stage messages always; --no-progress turns off only the bars


def load_data(ctx: Context) -> None:
    from elasticdenser.data import load_collection

    ctx.collection = load_collection(ctx.args.collection, ctx.args.data_dir)
    if ctx.args.max_queries:
        ctx.collection.queries = ctx.collection.queries[: ctx.args.max_queries]
    s = ctx.collection.summary()
    ctx.log(f"[data] {ctx.collection.name}: {s['documents']} passages, {s['queries']} queries")


def load_model(ctx: Context) -> None:
    from elasticdenser.commands._common import pick_device
    from elasticdenser.model.towers import load_towers

    ctx.encoder, documents = load_towers(ctx.args.model, pick_device(ctx.args.device))
    if documents is not ctx.encoder:  # a trained model: its documents are its recorded tower's
        ctx.extra["document_encoder"] = documents
    ctx.log(f"[model] {ctx.encoder.space.full.name}, default points: "
            + ", ".join(p.name for p in ctx.encoder.default_points()))


def build_index(ctx: Context) -> None:
    from elasticdenser.commands._common import resolve_points
    from elasticdenser.index import build
    from elasticdenser.index import faiss_index as fi

    enc = ctx.encoder
    # every default width is indexed, whichever points this run then evaluates
    widths = enc.space.widths(list(enc.default_points()) + resolve_points(ctx.args.points, enc))
    ctx.points = resolve_points(ctx.args.points, enc)
    # documents are encoded once, by the full model of the (frozen) document tower
    doc_enc = ctx.extra.get("document_encoder", enc)
    cached = ctx.extra.get("document_embeddings")  # the training stage already encoded them
    if not cached:
        from elasticdenser.commands._common import warn_slow_bf16

        warn_slow_bf16(ctx.args.precision, doc_enc.device)
    build.encode_stage(doc_enc, ctx.collection.corpus, ctx.out, collection=ctx.collection.name,
                       batch_size=ctx.args.batch_size, dtype=ctx.args.dtype, precision=ctx.args.precision,
                       progress=not ctx.args.no_progress, save_model_dir=False,
                       precomputed=np.load(cached, mmap_mode="r") if cached else None)
    build.merge_stage(doc_enc, ctx.out, collection=ctx.collection.name)
    model_dir = ctx.extra.get("training", {}).get("model_dir", ctx.args.model)
    build.record_models(ctx.out, enc, doc_enc, model_dir=model_dir)
    m = build.index_stage(ctx.out, widths, fi.parse_index_types(ctx.args.index_type, widths))
    ctx.log("[index] " + ", ".join(f"{m['indexes'][str(w)]['file']} ({m['indexes'][str(w)]['factory']})" for w in widths))


def search_points(ctx: Context) -> None:
    from elasticdenser.eval.evaluate import compare_points, evaluate_points
    from elasticdenser.searcher import Searcher

    ctx.searcher = Searcher.open(ctx.out, encoder=ctx.encoder)
    ctx.rows, ctx.runs = evaluate_points(
        ctx.searcher, ctx.collection, ctx.points, k=ctx.args.k, batch_size=32,
        progress=lambda r: ctx.log(f"[search] {r['point']}: nDCG@10 {r.get('ndcg@10', float('nan')):.4f}, "
                                   f"{r['latency_ms']:.1f} ms / batch of 32"))
    ctx.comparison = compare_points(ctx.collection, ctx.runs)


def report(ctx: Context) -> None:
    from elasticdenser.eval.report import markdown_table, save_report

    cols = ["point", "params_m", "latency_ms", "ndcg@10", "mrr@10", "recall@20", "recall@100", "answer@20", "answer@100"]
    cols = [c for c in cols if any(c in r for r in ctx.rows)]
    ctx.log("\n" + markdown_table(ctx.rows, cols))
    if ctx.comparison is not None:
        ctx.log(str(ctx.comparison))
    meta = {"collection": ctx.collection.name, "k": ctx.args.k, "batch_size": 32, "stage_seconds": ctx.timings}
    paths = save_report(ctx.out, ctx.rows, meta, ctx.comparison)
    ctx.log(f"[report] {paths['json']} {paths['md']}")


def train(ctx: Context) -> None:
    """A short elastic training stage (skipped with ``--train-steps 0``)."""
    if ctx.args.train_steps > 0:
        from elasticdenser.training.stage import pipeline_train_stage

        pipeline_train_stage(ctx)
        ctx.encoder.eval()


def simulate(ctx: Context) -> None:
    """Profile every point on this machine, then a discrete-event ramp: router vs static points."""
    if ctx.args.slo_ms <= 0:
        return
    import random

    from elasticdenser.serve.measure import measure_profile
    from elasticdenser.serve.profile import save_profile
    from elasticdenser.serve.router import RouterConfig
    from elasticdenser.serve.simulate import ramp_summary

    queries = random.Random(0).sample(ctx.collection.queries, min(200, len(ctx.collection.queries)))
    profile = measure_profile(ctx.searcher, queries, ctx.collection.qrels or None, k=10, points=ctx.points,
                              batch_sizes=(1, 2, 4, 8, 16, 32), repeats=3, log=ctx.log)
    save_profile(ctx.out, profile)
    ctx.log("\n" + ramp_summary(profile, RouterConfig(slo_ms=ctx.args.slo_ms)))


#: The stages, in order; other modules may insert theirs (keep each small and single-purpose).
STAGES: List[Callable[[Context], None]] = [load_data, load_model, train, build_index, search_points, report, simulate]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="main job: encode, index per width, search every default point, metrics table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collection", nargs="?", default="nq-sample")
    add_data_dir(p)
    add_out(p, "experiment directory", required=True)
    p.add_argument("--model", default=None, help="encoder directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--index-type", action="append", default=None, metavar="[WIDTH=]FACTORY")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--batch-size", type=int, default=64, help="corpus encoding batch size")
    add_precision(p)
    p.add_argument("--points", default="default", help="points to evaluate: 'default' (all default points), 'full', or names")
    p.add_argument("-k", "--k", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=None)
    add_progress(p)
    add_device(p)
    p.add_argument("--train-steps", type=int, default=0,
                   help="elastic training steps before indexing (0: evaluate the starting model by plain truncation)")
    p.add_argument("--train-config", default=None, help="YAML/TOML training config (elasticdenser train --print-config)")
    p.add_argument("--slo-ms", type=float, default=0.0,
                   help="end with a profile + discrete-event load simulation at this latency target (0: skip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, stages: Optional[List[Callable[[Context], None]]] = None) -> int:
    ctx = Context(args=args, out=Path(args.out))
    ctx.out.mkdir(parents=True, exist_ok=True)
    for stage in stages or STAGES:
        t0 = time.perf_counter()
        stage(ctx)
        ctx.timings[stage.__name__] = round(time.perf_counter() - t0, 2)
    return 0
