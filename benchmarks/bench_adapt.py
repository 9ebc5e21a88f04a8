"""Label-free corpus adaptation (issue 14): does a small operating point keep its quality on a
corpus it was never distilled on, once trained against that corpus with label-free questions?

Everything runs through the CLI a user runs (subprocesses of ``elasticdenser``): ``index`` the
corpus once with the untrained model, ``train --experiment`` against its stored embeddings (no
labels: ``use_collection_train=false``; the collection's evaluation questions are excluded from
every source), ``index --model TRAINED`` (the document tower re-uses the encoded chunks), and
``evaluate``. Rows per collection:

- ``untrained``: plain truncation of all-MiniLM-L6-v2 (the 100 % reference is its full point);
- ``nq-trained``: the model trained on nq-sample with the pool (today's main-job recipe);
- ``pool``: the NQ/TriviaQA pool alone against this corpus's documents (the old CLI default);
- ``adapted``: the sources under test (default: the CLI default, pseudo-queries 1:1 with the pool);
- ``static``: a static model of the smallest shape, adapted the same way (``--static-on``);
- ``query-log``: the collection's training questions as an unlabeled query log (their text only,
  through ``train --queries FILE``, the path of a user who has a log; ``--query-log-on``);
- ``bm25``: bm25s, the lexical anchor.

Resumable: a step whose output exists is skipped, so collections can be run one at a time::

    python benchmarks/bench_adapt.py --collections scifact,cacm --out runs/adapt
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

COLLECTIONS = ["nq-sample", "squad-sample", "scifact", "trec-dl", "cacm", "cranfield"]
ROWS = ["untrained", "nq-trained", "pool", "adapted", "query-log", "static", "bm25"]
#: ``train``'s defaults (TrainConfig), label-free: no labelled split, evaluation questions dropped
TRAIN_SET = ["eval_every=0", "log_every=20", "use_collection_train=false", "drop_overlap=true"]
SMALLEST = "L3-H6-F768-D192"


#: peak resident memory (GB) of the last command :func:`cli` ran (that process alone, from wait4)
LAST_PEAK_RSS_GB = [0.0]


def cli(*args: str, log: Path) -> float:
    """Run ``elasticdenser ARGS`` (output appended to ``log``); returns wall seconds (its peak RSS
    goes to ``LAST_PEAK_RSS_GB``); raises on failure."""
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write(f"\n$ elasticdenser {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "elasticdenser", *args], stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    LAST_PEAK_RSS_GB[0] = round(usage.ru_maxrss / 1024 ** 2, 2)  # Linux: kilobytes
    if proc.returncode != 0:
        raise SystemExit(f"elasticdenser {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.time() - t0


def metrics_of(exp_or_report: Path) -> Dict[str, dict]:
    rows = json.loads((exp_or_report / "metrics.json").read_text())["rows"]
    return {r["point"]: {k: r[k] for k in ("ndcg@10", "mrr@10", "recall@100") if k in r} for r in rows}


def index_with(model: Path, base: Path, exp: Path, collection: str, common: List[str], log: Path) -> None:
    """``index --model MODEL`` into ``exp``, re-using ``base``'s encoded chunks (same document tower)."""
    if (exp / "manifest.json").is_file():
        return
    if (base / "chunks").is_dir() and not (exp / "chunks").exists():
        exp.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base / "chunks", exp / "chunks")
    cli("index", collection, "--out", str(exp), "--model", str(model), *common, log=log)


def evaluate(exp: Path, collection: str, out: Path, common: List[str], log: Path, points: str = "default") -> Dict[str, dict]:
    if not (out / "metrics.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        cli("evaluate", str(exp), collection, "--points", points, "--out", str(out), *common[:2], log=log)
    return metrics_of(out)


def points_of(sets: List[str]) -> str:
    """The points a row is evaluated at: those it trained when static (``static=true`` with
    ``points=[...]``), else the model's default points."""
    if "static=true" not in sets:
        return "default"
    listed = [s.split("=", 1)[1] for s in sets if s.startswith("points=")]
    return listed[-1].strip("[]") if listed else SMALLEST


def write_query_log(collection: str, data_dir: str, path: Path) -> Path:
    """The collection's training questions, text only (one per line): an unlabeled query log."""
    from elasticdenser.data import load_collection

    texts = [" ".join(q.text.split()) for q in load_collection(collection, data_dir).train_queries]
    if not texts:
        raise SystemExit(f"{collection} has no training questions to serve as a query log")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def bm25(collection: str, data_dir: str) -> dict:
    import bm25s

    from elasticdenser.data import load_collection
    from elasticdenser.eval.metrics import evaluate as rx_evaluate
    from elasticdenser.eval.metrics import make_qrels, make_run

    coll = load_collection(collection, data_dir)
    docs = list(coll.corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d.contents for d in docs], show_progress=False), show_progress=False)
    rows, scores = retriever.retrieve(bm25s.tokenize([q.text for q in coll.queries], show_progress=False),
                                      k=min(100, len(docs)), show_progress=False)
    run = {q.query_id: {docs[int(r)].doc_id: float(s) for r, s in zip(rr, ss)} for q, rr, ss in zip(coll.queries, rows, scores)}
    qrels = {q: d for q, d in coll.qrels.items() if q in run}
    out = rx_evaluate(make_qrels(qrels), make_run(run), ["ndcg@10", "mrr@10", "recall@100"])
    return {k: round(float(v), 4) for k, v in out.items()}


def run_collection(name: str, args, work: Path, results: dict) -> None:
    log = work / "log.txt"
    common = ["--data-dir", args.data_dir, "--no-progress"]
    res = results.setdefault(name, {"rows": {}, "seconds": {}})
    base = work / "base"
    if not (base / "manifest.json").is_file():
        res["seconds"]["index"] = round(cli("index", name, "--out", str(base), *common, log=log), 1)
    res["rows"]["untrained"] = evaluate(base, name, work / "eval-untrained", common, log)
    cfg = TRAIN_SET + [f"exclude=[{name}]", f"seed={args.seed}"] + ([f"steps={args.steps}"] if args.steps else []) + args.settings
    if args.nq_model:
        exp = work / "exp-nq-trained"
        index_with(Path(args.nq_model), base, exp, name, common, log)
        res["rows"]["nq-trained"] = evaluate(exp, name, work / "eval-nq-trained", common, log)
    variants = [("pool", ["--source", "pool"], []), ("adapted", [a for s in args.adapted for a in ("--source", s)], [])]
    for spec in args.extra_row:  # NAME|SOURCE SOURCE ...|KEY=VALUE;KEY=VALUE (ablations)
        row, sources, sets = (spec.split("|") + ["", ""])[:3]
        variants.append((row, [a for src in sources.split() for a in ("--source", src)] or variants[1][1],
                         [x for x in sets.split(";") if x]))
    if name in args.query_log_on:
        variants.append(("query-log", ["--queries", str(write_query_log(name, args.data_dir, work / "query-log.txt"))], []))
    if name in args.static_on:
        variants.append(("static", [a for s in args.adapted for a in ("--source", s)], ["static=true", f"points=[{SMALLEST}]"]))
    variants = [v for v in variants if v[0] not in args.skip_rows]
    for row, sources, extra in variants:
        run_dir = work / f"train-{row}"
        model = run_dir / "model"
        if not (model / "config.json").is_file():
            t = cli("train", "--collection", name, "--experiment", str(base), "--out", str(run_dir), *sources,
                    *common, "--set", *(cfg + extra), log=log)
            res["seconds"][f"train-{row}"] = round(t, 1)
            res.setdefault("peak_rss_gb", {})[f"train-{row}"] = LAST_PEAK_RSS_GB[0]
            res.setdefault("sources", {})[row] = json.loads((model / "training_summary.json").read_text())["sources"]
        exp = work / f"exp-{row}"
        index_with(model, base, exp, name, common, log)
        res["rows"][row] = evaluate(exp, name, work / f"eval-{row}", common, log, points=points_of(extra))
    if "bm25" not in res["rows"]:
        res["rows"]["bm25"] = bm25(name, args.data_dir)


def table(results: dict) -> str:
    """Markdown: per collection and row, nDCG@10 / MRR@10 per point, with % of the untrained full point."""
    lines = []
    for name, res in results.items():
        rows = res["rows"]
        full = rows.get("untrained", {}).get("L6-H12-F1536-D384")
        if not full:
            continue
        points = list(rows["untrained"])
        lines += [f"\n#### {name}\n", "| row | " + " | ".join(points) + " |", "|---|" + "---:|" * len(points)]
        for row in ROWS + sorted(set(rows) - set(ROWS)):
            if row not in rows:
                continue
            cells = []
            for p in points:
                m = rows[row] if row == "bm25" else rows[row].get(p)
                if m is None:
                    cells.append("")
                    continue
                cells.append(f"{m['ndcg@10']:.3f} ({100 * m['ndcg@10'] / full['ndcg@10']:.0f} %) / "
                             f"{m['mrr@10']:.3f} ({100 * m['mrr@10'] / full['mrr@10']:.0f} %)")
                if row == "bm25":
                    break
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collections", default=",".join(COLLECTIONS))
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--out", default="runs/adapt", help="work folder (ignored by git): experiments, runs, logs")
    ap.add_argument("--results", default="benchmarks/results/adapt.json")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps, the same for every run (default: train's; rows before 0.11.0 used 200, "
                    "0.11.0's 1,000)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a train setting for every trained row (rows before 0.12.0 had equal point "
                    "weights: --set smallest_weight=1)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--adapted", action="append", default=None, metavar="SOURCE",
                    help="the adapted row's sources (repeatable; default pool@1 pseudo@1, the CLI default)")
    ap.add_argument("--nq-model", default=None,
                    help="model for the nq-trained row (default: nq-sample's pool row, trained first)")
    ap.add_argument("--static-on", default="scifact,trec-dl")
    ap.add_argument("--query-log-on", default="scifact",
                    help="collections whose training questions (text only) also train a query-log row")
    ap.add_argument("--skip-rows", default="", help="comma-separated trained rows not to run (e.g. pool)")
    ap.add_argument("--extra-row", action="append", default=[], metavar="NAME|SOURCES|SETS",
                    help="an ablation row: sources (space-separated; default the adapted row's) and --set "
                    "entries (;-separated), e.g. 'sentence||pseudo_kind=sentence' or "
                    "'faiss||candidate_search=faiss;distill_candidates=64'")
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("--data-dir or $ELASTICDENSER_DATA is needed")
    args.adapted = args.adapted or ["pool@1", "pseudo@1"]
    args.static_on = [c for c in args.static_on.split(",") if c]
    args.query_log_on = [c for c in args.query_log_on.split(",") if c]
    args.skip_rows = [r for r in args.skip_rows.split(",") if r]
    out = Path(args.out)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    names = [c for c in args.collections.split(",") if c]
    nq_pool = out / "nq-sample" / "train-pool" / "model"
    for name in names:
        if args.nq_model is None and name != "nq-sample" and (nq_pool / "config.json").is_file():
            args.nq_model = str(nq_pool)
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        run_collection(name, args, work, results)
        if name == "nq-sample" and args.nq_model is None and "pool" in results[name]["rows"]:
            results[name]["rows"]["nq-trained"] = results[name]["rows"]["pool"]
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        print(table({name: results[name]}), flush=True)
    print(table(results))
    return 0


def render(results_path: str) -> str:
    """The tables of a results file (``python -c 'import bench_adapt; print(bench_adapt.render(...))'``)."""
    return table(json.loads(Path(results_path).read_text()))

if __name__ == "__main__":
    sys.exit(main())
