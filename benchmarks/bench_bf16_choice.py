"""Per-point bf16 batch sizes (``elasticdenser.model.bf16_choice``) against the one fixed size before.

On a CPU with bf16 products and OpenVINO installed: measures each default point's size as `profile`
does, then times ``Searcher.search_texts`` (text in -> hits out, the router's batched call) of every
point at every batch size under both rules -- ``fixed``: bf16 from ``fastpath.AUTO_BF16_MIN_BATCH``
rows for every point (the rule before), ``measured``: from the point's own size -- in one process,
interleaved (a fresh random order of (point, size, rule) each round), each visit ``--burst`` calls in
a row with the first left out (a served point runs in a row). Medians; CPU flags recorded.

    HF_HUB_OFFLINE=1 python benchmarks/bench_bf16_choice.py --exp runs/exp-speed \\
        --out benchmarks/results/bf16_choice.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an indexed experiment")
    ap.add_argument("--collection", default="nq-sample", help="where the questions come from")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--sizes", default="2,4,6,8,12,16,24,32")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from elasticdenser import Searcher
    from elasticdenser.atomic import write_json
    from elasticdenser.data import load_collection
    from elasticdenser.model import fastpath
    from elasticdenser.model.bf16_choice import measure_bf16_min_batch
    from elasticdenser.model.cpu import cpu_features

    searcher = Searcher.open(args.exp, backend="auto")
    cpu = cpu_features()
    if not fastpath.auto_runs_bf16("auto"):
        print(f"bf16 is not in play here (CPU {cpu}; or OpenVINO is not installed): nothing to choose")
        return 0
    enc = searcher.encoder
    points = enc.default_points()
    questions = [q.text for q in load_collection(args.collection, args.data_dir).queries]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    t0 = time.time()
    chosen, probe = {}, {}
    for p in points:
        chosen[p.name], probe[p.name] = measure_bf16_min_batch(enc, p, questions)
    measure_s = time.time() - t0
    rules = {"fixed": {p.name: fastpath.AUTO_BF16_MIN_BATCH for p in points}, "measured": chosen}
    rng = random.Random(0)
    samples = {}
    for p in points:  # warm every runner both rules can use
        for rule in rules.values():
            fastpath.set_bf16_min_batch(enc, rule)
            searcher.search_texts(questions[: max(sizes)], k=10, point=p)
            searcher.search_texts(questions[:2], k=10, point=p)
    for _ in range(args.rounds):
        visits = [(p, s, r) for p in points for s in sizes for r in rules]
        rng.shuffle(visits)
        for p, size, rule in visits:
            fastpath.set_bf16_min_batch(enc, rules[rule])
            for i in range(args.burst):
                batch = rng.sample(questions, size)
                t = time.perf_counter()
                searcher.search_texts(batch, k=10, point=p)
                if i or args.burst == 1:
                    samples.setdefault((p.name, size, rule), []).append((time.perf_counter() - t) * 1e3)
    table = {p.name: {s: {r: round(statistics.median(samples[(p.name, s, r)]), 3) for r in rules} for s in sizes}
             for p in points}
    print(f"cpu: {cpu}; sizes measured in {measure_s:.1f} s: {chosen}")
    print("| point | " + " | ".join(f"b{s} fixed / measured ms" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for p in points:
        print(f"| {p.name} (bf16 from {chosen[p.name]}) | "
              + " | ".join(f"{t['fixed']:.2f} / {t['measured']:.2f}" for t in table[p.name].values()) + " |")
    full, small = points[0].name, points[-1].name
    ratios = {r: {s: round(table[full][s][r] / table[small][s][r], 3) for s in sizes} for r in rules}
    print("smallest vs full:", json.dumps(ratios))
    if args.out:
        write_json(args.out, {"exp": args.exp, "cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "rounds": args.rounds, "burst": args.burst, "chosen": chosen, "measure_s": round(measure_s, 1),
                              "probe_ms": probe, "search_texts_ms": table, "smallest_vs_full": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
