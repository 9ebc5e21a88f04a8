"""Where a point loses against another, by query length: per-query nDCG@10 of TREC run files that
``elasticdenser evaluate --save-runs`` wrote, grouped by the query's length in tokens.

A collection with few judged queries (cacm: 52) moves by a point when one query does; this says
which queries a small point loses on, and how far the mean could move by chance (the standard
error of the mean per-query difference, and a seeded bootstrap interval of the ratio of means).
Lengths count the tokenizer's ids with [CLS] and [SEP], as ``query_max_length`` does.

    elasticdenser evaluate runs/adapt/cacm/exp-w32 cacm --save-runs --out OUT
    python benchmarks/by_query_length.py cacm OUT/metrics-runs/L6-H12-F1536-D384.trec \\
        OUT/metrics-runs/L3-H6-F768-D192.trec --buckets 32,64
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("collection")
    ap.add_argument("reference", help="TREC run the others are compared with (e.g. the full point's)")
    ap.add_argument("runs", nargs="+", help="TREC runs to compare with the reference")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--buckets", default="32,64", help="upper bounds (tokens, inclusive) of the length groups")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--out", default=None, help="also write the table as JSON")
    args = ap.parse_args(argv)
    import ranx
    from transformers import AutoTokenizer

    from elasticdenser.data import load_collection
    from elasticdenser.eval.metrics import make_qrels
    from elasticdenser.model.loading import default_model_path

    coll = load_collection(args.collection, args.data_dir)
    qrels = make_qrels(coll.qrels)
    texts = {q.query_id: q.text for q in coll.queries if q.query_id in coll.qrels}
    qids = sorted(texts)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    length = np.array([len(tok(texts[q])["input_ids"]) for q in qids])

    def per_query(path: str) -> np.ndarray:
        run = ranx.Run.from_file(path, kind="trec")
        missing = [q for q in qids if q not in run.run]
        if missing:  # a run cut with --max-queries would score them 0 and look like a loss
            raise SystemExit(f"{path}: {len(missing)} judged queries of {coll.name} have no ranking (e.g. {missing[0]})")
        ranx.evaluate(qrels, run, args.metric, make_comparable=True)
        return np.array([run.scores[args.metric].get(q, 0.0) for q in qids])

    ref = per_query(args.reference)
    bounds = [int(b) for b in args.buckets.split(",") if b]
    groups = []
    lo = 0
    for hi in bounds + [10**9]:
        groups.append((lo, hi, (length > lo) & (length <= hi)))
        lo = hi
    rng = np.random.default_rng(0)
    boot = rng.integers(0, len(qids), size=(args.bootstrap, len(qids)))
    result = {"collection": coll.name, "metric": args.metric, "queries": len(qids), "reference": args.reference,
              "reference_mean": round(float(ref.mean()), 4), "runs": {}}
    head = "| run | all | " + " | ".join(f"{a + 1}-{b if b < 10**9 else 'max'} tokens (n={int(m.sum())})"
                                         for a, b, m in groups) + " | SE of the mean difference | ratio, 95 % bootstrap |"
    print(f"{args.metric} per query on {coll.name} ({len(qids)} judged queries); reference {Path(args.reference).name}: "
          f"{ref.mean():.4f}")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for path in args.runs:
        score = per_query(path)
        diff = score - ref
        ratio = score[boot].mean(1) / np.maximum(ref[boot].mean(1), 1e-12)
        row = {"mean": round(float(score.mean()), 4), "ratio": round(float(score.mean() / ref.mean()), 4),
               "se_difference": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4),
               "ratio_95": [round(float(x), 4) for x in np.percentile(ratio, [2.5, 97.5])],
               "groups": {f"{a + 1}-{b if b < 10**9 else 'max'}": {"n": int(m.sum()), "reference": round(float(ref[m].mean()), 4),
                                           "run": round(float(score[m].mean()), 4)} for a, b, m in groups if m.any()}}
        result["runs"][path] = row
        cells = [f"{ref[m].mean():.3f} -> {score[m].mean():.3f}" if m.any() else "-" for _, _, m in groups]
        print(f"| {Path(path).parent.parent.name}/{Path(path).stem} | {ref.mean():.3f} -> {score.mean():.3f} "
              f"({100 * row['ratio']:.1f} %) | " + " | ".join(cells) +
              f" | {row['se_difference']:.3f} | {100 * row['ratio_95'][0]:.1f}-{100 * row['ratio_95'][1]:.1f} % |")
    if args.out:
        from elasticdenser.atomic import write_json

        write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
