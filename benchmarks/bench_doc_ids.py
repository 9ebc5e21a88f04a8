"""Memory and load time of a Searcher's row -> document id table at Wikipedia scale.

Writes a ``doc_ids.txt`` of ``--n`` ids shaped like DPR's (``1`` .. ``21015324``; ``--prefix`` for
longer ids), then, each in a fresh process, loads it as a list of str (what the Searcher held before)
and as :class:`elasticdenser.index.encode.DocIds`, and reports load time, the peak-RSS increase while
loading and the resident memory still held afterwards.

    python benchmarks/bench_doc_ids.py --n 21015324
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, resource, sys, time
from pathlib import Path
def rss():  # resident now, in KiB (ru_maxrss is the peak)
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
now = rss()
t = time.perf_counter()
if sys.argv[2] == "list":
    ids = (Path(sys.argv[1]) / "doc_ids.txt").read_text(encoding="utf-8").splitlines()
else:
    from elasticdenser.index.encode import read_doc_ids
    base, now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss()  # after the (numpy) import
    t = time.perf_counter()
    ids = read_doc_ids(sys.argv[1])
dt = time.perf_counter() - t
assert len(ids) > 0 and ids[len(ids) // 2]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20, (rss() - now) / 2**20, dt)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=21015324)
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc_ids.txt"
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(f"{args.prefix}{i}\n" for i in range(1, args.n + 1))
        out = {"n": args.n, "prefix": args.prefix, "file_mib": round(path.stat().st_size / 2**20, 1)}
        for kind in ("list", "DocIds"):
            peak, held, seconds = map(float, subprocess.check_output([sys.executable, "-c", CHILD, tmp, kind]).split())
            out[kind] = {"peak_rss_increase_gib": round(peak, 3), "held_after_load_gib": round(held, 3),
                         "load_s": round(seconds, 2)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
