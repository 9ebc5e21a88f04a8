"""ElasticRanker (issue 17): reranking quality and cost per first stage, through the CLI a user runs.

Per collection, in ``--out/<collection>/``: ``index --bm25`` (the retriever, ``--model``, + BM25),
``train-ranker`` (teacher, then every ranker point distilled), a static ranker of the smallest
shape trained the same way (same teacher, same lists, only that shape), then ``evaluate`` rows:

- ``bm25``, the dense full point, the dense smallest point, the fused first stage (RRF);
- the dense full point + every ranker point, the dense smallest point + every ranker point;
- the fused first stage + every ranker point; the dense full point + the static ranker, and + the
  teacher (before the elastic phase).

Each row's nDCG@10 / MRR@10 and cost per query (``evaluate``'s batch latency / batch size; the
ranker runs on the ONNX Runtime path, ``backend="auto"``). Resumable: a step whose output exists is
skipped. Results: ``--results`` (JSON) and the markdown table printed at the end::

    HF_HUB_OFFLINE=1 python benchmarks/bench_ranker.py --collections squad-sample-test \\
        --max-queries 200 --out runs/rank
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from elasticdenser.model.ranker import ranker_default_points
from elasticdenser.operating_point import ElasticSpace

# the smallest default point of a ranker on all-MiniLM-L6-v2 (6 layers, 12 heads, FFN 1536, 384 wide)
SMALLEST_RANKER = ranker_default_points(ElasticSpace(6, 12, 1536, 384))[-1].name
SMALLEST_QUERY = "L3-H6-F768-D192"
FULL = "L6-H12-F1536-D384"


def cli(*args: str, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write(f"\n$ elasticdenser {' '.join(args)}\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "elasticdenser", *args], check=True, stdout=fh, stderr=fh,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return time.time() - t0


def rows_of(report: Path) -> List[dict]:
    return json.loads((report / "metrics.json").read_text())["rows"]


def run_collection(name: str, args, work: Path, results: dict) -> None:
    log = work / "log.txt"
    work.mkdir(parents=True, exist_ok=True)
    common = ["--data-dir", args.data_dir]
    tag = args.tag
    res = results.setdefault(name + tag, {"rows": {}, "seconds": {}})
    res["rows"] = {}  # re-read below from this run's metrics.json files, so no row of an older run lingers
    exp = work / "exp"
    # --rankers-from: rankers trained on another collection, evaluated here as they are (transfer)
    trained = Path(args.rankers_from) if args.rankers_from else work
    ranker, static = trained / f"ranker{tag}", trained / f"ranker-static{tag}"
    teacher = Path(args.teacher) if args.teacher else ranker / "teacher"
    sets = [f"list_size={args.list_size}", f"batch_size={args.batch_size}", f"candidates={args.candidates}", *args.set]
    if not (exp / "bm25" / "settings.json").is_file():
        model = ["--model", args.model] if args.model else []
        res["seconds"]["index"] = round(cli("index", name, "--out", str(exp), "--bm25", "--no-progress", *model, *common,
                                            log=log), 1)
    # the elastic ranker is trained when a row needs it, or to train the teacher the static row distils from
    needs_ranker = not args.rankers_from and (
        not args.teacher or not args.evals or bool({"dense", "fusion"} & set(args.evals.split(","))))
    if needs_ranker and not (ranker / "model" / "config.json").is_file():
        first = ["--teacher", args.teacher] if args.teacher else ["--teacher-steps", str(args.teacher_steps)]
        res["seconds"]["train-ranker"] = round(cli(
            "train-ranker", str(exp), "--collection", name, "--out", str(ranker), *first, "--steps", str(args.steps),
            "--no-progress", *common, "--set", *sets, log=log), 1)
    wanted = args.evals.split(",") if args.evals else ["dense", "bm25", "fusion", "static", "teacher"]
    if not args.rankers_from and "static" in wanted and not (static / "model" / "config.json").is_file():
        res["seconds"]["train-static"] = round(cli(
            "train-ranker", str(exp), "--collection", name, "--out", str(static), "--teacher", str(teacher),
            "--steps", str(args.steps), "--points", args.static_point, "--no-progress", *common, "--set", *sets,
            "static=true", log=log), 1)
    evals = {
        "dense": ["--points", args.query_points, "--ranker", str(ranker / "model")],
        "bm25": ["--first-stage", "bm25", "--points", "full"],
        "fusion": ["--first-stage", "fusion", "--points", "full", "--ranker", str(ranker / "model")],
        "static": ["--points", "full", "--ranker", str(static / "model"), "--ranker-points", args.static_point],
        # the teacher before the elastic phase: what distillation started from
        "teacher": ["--points", "full", "--ranker", str(teacher), "--ranker-points", "full"],
    }
    if args.teacher or args.rankers_from:  # its row belongs to the run that trained it
        del evals["teacher"]
    for key, extra in evals.items():  # --evals picks what runs; every row already measured is read
        out = work / (f"eval-{key}" if key == "bm25" else f"eval-{key}{tag}")  # BM25 is the same in every variant
        if not (out / "metrics.json").is_file():
            if key not in wanted:
                continue
            res["seconds"][f"eval-{key}"] = round(cli(
                "evaluate", str(exp), name, "--out", str(out), "--k", "100", "--max-queries", str(args.max_queries),
                "--rerank", str(args.rerank), *extra, *common, log=log), 1)
        for row in rows_of(out):
            if key in ("static", "teacher") and "+" not in row["point"]:
                continue  # the dense row again, measured in the "dense" run
            label = (f"{key}: " if key in ("static", "teacher") else "") + row["point"]
            res["rows"][label] = {k: row.get(k) for k in ("ndcg@10", "mrr@10", "recall@100", "latency_ms", "queries")}
    res["batch_size"] = 32
    res["max_queries"] = args.max_queries
    res["rerank"] = args.rerank
    if args.router_slo_ms:
        route(name, args, exp, ranker, work, res, log)


def route(name: str, args, exp: Path, ranker: Path, work: Path, res: dict, log: Path) -> None:
    """The router over both stages: profile every (query point, ranker point, depth) on this machine,
    then the discrete-event ramp 0.2x -> 3x of the capacity of the full pipeline (full query point +
    full ranker at the deepest depth), the router against every static configuration."""
    from elasticdenser.errors import InvalidInputError
    from elasticdenser.serve.profile import load_profile

    try:
        measured = "ranker_fingerprint" in load_profile(exp).extra
    except InvalidInputError:  # not profiled yet
        measured = False
    if not measured:
        res["seconds"]["profile"] = round(cli(
            "profile", str(exp), "--data-dir", args.data_dir, "--max-queries", "100", "--batch-sizes", "1,2,4,8,16,32",
            "--ranker", str(ranker / "model"), "--rerank-depths", "10,20", log=log), 1)
    profile = load_profile(exp)
    policies = ["router"] + [f"static:{n}" for n in profile.points]
    margin = ["--margin", str(args.router_margin)] if args.router_margin else []
    key = f"ramp-margin{args.router_margin:g}" if args.router_margin else "ramp"
    out = work / f"{key}.json"
    cli("simulate", "--profile", str(exp), "--slo-ms", str(args.router_slo_ms), "--policies", ",".join(policies),
        "--trace", "ramp:lo=0.2x,hi=3x,duration=300,hold=0.2,base=0.15", "--json", str(out), *margin, log=log)
    res[key] = {"slo_ms": args.router_slo_ms, "margin": args.router_margin or "default", **json.loads(out.read_text())}


def table(results: dict) -> str:
    lines = []
    for name, res in results.items():
        rows = res["rows"]
        base = {k: rows.get(k) for k in ("bm25", FULL)}
        lines += [f"\n#### {name} ({res.get('max_queries')} test queries, rerank depth {res.get('rerank')})\n",
                  "| first stage + ranker | nDCG@10 | MRR@10 | vs dense full (nDCG) | ms / query |", "|---|---:|---:|---:|---:|"]
        for label, m in rows.items():
            if m.get("ndcg@10") is None:
                continue
            delta = 100 * (m["ndcg@10"] - base[FULL]["ndcg@10"]) if base.get(FULL) else float("nan")
            per_query = m["latency_ms"] / res.get("batch_size", 32) if m.get("latency_ms") else float("nan")
            lines.append(f"| {label} | {m['ndcg@10']:.3f} | {m['mrr@10']:.3f} | {delta:+.1f} | {per_query:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collections", default="squad-sample-test")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--out", default="runs/rank")
    ap.add_argument("--results", default="benchmarks/results/ranker.json")
    ap.add_argument("--max-queries", type=int, default=200)
    ap.add_argument("--rerank", type=int, default=20)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--list-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--query-points", default=f"{FULL},{SMALLEST_QUERY}", help="first-stage points of the dense rows")
    ap.add_argument("--teacher", help="a trained cross-encoder to distil from (skips the teacher phase)")
    ap.add_argument("--tag", default="", help="a variant: its rankers and rows live under ranker<TAG>, eval-*<TAG> "
                    "and results key <collection><TAG>")
    ap.add_argument("--evals", default="", help="only these evaluation rows (comma-separated: dense, bm25, fusion, "
                    "static, teacher; default all); the static ranker is trained only for its row")
    ap.add_argument("--set", nargs="*", default=[], help="more train-ranker settings (KEY=VALUE), e.g. "
                    "lr=1e-4 reorder_layers=true")
    ap.add_argument("--model", help="the retriever of a new experiment (default: the untrained all-MiniLM-L6-v2); "
                    "a model trained by `elasticdenser train` makes the dense smallest rows meaningful")
    ap.add_argument("--rankers-from", help="a collection's work folder (e.g. runs/rank/squad-sample-test) whose "
                    "trained rankers (ranker<TAG>, ranker-static<TAG>) are evaluated here without training")
    ap.add_argument("--static-point", default=SMALLEST_RANKER, help="the shape of the static ranker baseline")
    ap.add_argument("--router-slo-ms", type=float, default=0, help="also profile both stages and run the DES ramp "
                    "at this SLO (0: skip)")
    ap.add_argument("--router-margin", type=float, default=0, help="the router's utilisation margin in the DES ramp "
                    "(0: the router's default); results key ramp-margin<M>")
    args = ap.parse_args(argv)
    if not args.data_dir:
        raise SystemExit("--data-dir or $ELASTICDENSER_DATA is needed")
    results_path = Path(args.results)
    results: Dict[str, dict] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in [c for c in args.collections.split(",") if c]:
        run_collection(name, args, Path(args.out) / name, results)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
