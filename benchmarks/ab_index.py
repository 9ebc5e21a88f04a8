"""`elasticdenser index` as a user runs it, on an old checkout and on this one alternately: the
wall time of each run (start-up, encoding, merge, FAISS indexes) and then `elasticdenser evaluate`
on both sides' last index, as per-point metric differences (new - old).

The old side runs through ``benchmarks/at_revision.py`` (its package, not this checkout's); the
ONNX export cache is off on both sides, so neither reuses the other's graphs.

    git worktree add /tmp/old REV
    python benchmarks/ab_index.py --old /tmp/old --collection nq-sample --runs 2 --out benchmarks/results/index-ab.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("mrr@10", "ndcg@10", "recall@100")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="a checkout of the old revision (git worktree add)")
    ap.add_argument("--collection", default="nq-sample")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--runs", type=int, default=2, help="old / new pairs, alternating")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    env = {**os.environ, "ELASTICDENSER_CACHE": "off", "HF_HUB_OFFLINE": "1"}
    cli = {"old": [sys.executable, str(HERE / "at_revision.py"), args.old, "-m", "elasticdenser"],
           "new": [sys.executable, "-m", "elasticdenser"]}
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    res = {"collection": args.collection, "old": args.old, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "wall_s": {"old": [], "new": []}}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for side in ("old", "new"):
                exp = Path(tmp) / side
                shutil.rmtree(exp, ignore_errors=True)
                t = time.perf_counter()
                subprocess.run(cli[side] + ["index", args.collection, "--out", str(exp), "--no-progress", *data],
                               check=True, env=env, stdout=subprocess.DEVNULL)
                res["wall_s"][side].append(round(time.perf_counter() - t, 2))
                print(side, res["wall_s"][side][-1], flush=True)
        rows = {}
        for side in ("old", "new"):  # both indexes scored by this checkout's evaluation
            exp = Path(tmp) / side
            subprocess.run(cli["new"] + ["evaluate", str(exp), args.collection, "--points", "default", *data],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            rows[side] = json.loads((exp / "metrics.json").read_text())["rows"]
    res["metrics_new_minus_old"] = {a["point"]: {m: round(b[m] - a[m], 4) for m in METRICS}
                                    for a, b in zip(rows["old"], rows["new"])}
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
