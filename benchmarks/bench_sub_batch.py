"""How many rows one OpenVINO stream runs at a time: fixed rows vs a padded-token budget.

``OpenVinoSession`` cuts a batch over its single-thread streams. With a fixed cap of 8 rows a
batch of 32 short queries becomes four requests of 8, and each request pays a fixed cost that
8 rows of ~20 tokens do not pay back; passages (~130-256 tokens) were measured best near 8 rows.
This times both rules on the same batches, per point, interleaved in a fresh random order every
round, medians:

* ``rows8``: at most 8 rows per request (the rule before 0.16.0);
* ``tokens``: at most ``max(8, SUB_BATCH_TOKENS // padded length)`` rows (the default), i.e. one
  request per stream for short queries and still 8 rows for 256-token passages.

Query batches are nq-sample questions (8, 16, 32 and 64 rows, sorted longest first as
``encode_fast`` sends them); passage batches are 64 nq-sample passages of one length band, as
``index`` sends them (longest first). The model call only (``OpenVinoSession.run``), on as many
streams as ``--threads``. CPU flags are recorded with the figures.

    HF_HUB_OFFLINE=1 python benchmarks/bench_sub_batch.py --exp runs/exp-speed \
        --out benchmarks/results/sub_batch.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import numpy as np

RULES = {"rows8": 0, "tokens": None}  # SUB_BATCH_TOKENS per rule (None: the class default)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="an indexed experiment over nq-sample")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="OpenVINO streams (one thread each)")
    ap.add_argument("--query-batches", default="8,16,32,64")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from elasticdenser import Searcher
    from elasticdenser.data import load_collection
    from elasticdenser.model import fastpath
    from elasticdenser.model.batch_tokenizer import tokenize_batch
    from elasticdenser.model.cpu import cpu_features
    from elasticdenser.model.openvino_session import OpenVinoSession

    enc = Searcher.open(args.exp, backend="auto").encoder
    points = enc.default_points()
    points = [points[0], points[-1]]
    col = load_collection("nq-sample", args.data_dir)
    questions = [q.text for q in col.queries]
    passages = sorted((d.contents for d in col.corpus), key=len)
    rng = random.Random(0)
    default_tokens = OpenVinoSession.SUB_BATCH_TOKENS

    def feeds(texts, max_length):
        b = tokenize_batch(enc, sorted(texts, key=len, reverse=True), max_length, "np")
        out = {k: b[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
        return out

    def workloads():
        """A fresh set of batches per round: (name, feeds) for every query size and passage band."""
        out = [(f"queries b{n}", feeds(rng.sample(questions, n), enc.max_length))
               for n in (int(x) for x in args.query_batches.split(",") if x)]
        for band, (lo, hi) in {"passages short": (0.1, 0.4), "passages long": (0.6, 0.95)}.items():
            start = rng.randrange(int(lo * len(passages)), int(hi * len(passages)) - 64)
            out.append((f"{band} b64", feeds(passages[start : start + 64], enc.max_length)))
        return out

    runners = {p.name: fastpath.get_runner(enc, p, "openvino") for p in points}
    sessions = {name: r._session(args.threads) for name, r in runners.items()}
    times: dict = {}
    shapes: dict = {}
    for rnd in range(args.rounds + 1):  # round 0 warms up every shape family
        visits = [(w, f, p, rule) for w, f in workloads() for p in sessions for rule in RULES]
        rng.shuffle(visits)
        for work, f, point, rule in visits:
            OpenVinoSession.SUB_BATCH_TOKENS = default_tokens if RULES[rule] is None else RULES[rule]
            t0 = time.perf_counter()
            sessions[point].run(None, f)
            if rnd:
                times.setdefault(work, {}).setdefault(point, {}).setdefault(rule, []).append(time.perf_counter() - t0)
            shapes.setdefault(work, []).append(list(f["input_ids"].shape))
    OpenVinoSession.SUB_BATCH_TOKENS = default_tokens

    res = {"exp": args.exp, "threads": args.threads, "rounds": args.rounds, "cpu": cpu_features(),
           "precision": runners[points[0].name].precision, "sub_batch_rows": OpenVinoSession.SUB_BATCH,
           "sub_batch_tokens": default_tokens, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "median shape": {w: [int(statistics.median(s[i] for s in v)) for i in (0, 1)] for w, v in shapes.items()},
           "ms": {}, "tokens vs rows8": {}, "smallest vs full": {}}
    full, small = points[0].name, points[-1].name
    for work, per_point in times.items():
        ms = {p: {r: round(1e3 * statistics.median(v), 3) for r, v in rules.items()} for p, rules in per_point.items()}
        res["ms"][work] = ms
        res["tokens vs rows8"][work] = {p: round(ms[p]["rows8"] / ms[p]["tokens"], 3) for p in ms}
        res["smallest vs full"][work] = {r: round(ms[full][r] / ms[small][r], 3) for r in RULES}
    print(json.dumps({k: res[k] for k in ("cpu", "median shape", "ms", "tokens vs rows8", "smallest vs full")}, indent=1))
    if args.out:
        from elasticdenser.atomic import write_json

        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
