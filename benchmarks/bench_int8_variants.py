"""Which int8 configuration of the query path keeps cosine >= 0.999 to fp32 (issue 16, item 3)?

The opt-in ``int8`` backend quantises every weight product dynamically (int8 weights per output
channel, activations uint8 per tensor, per call). For the full and the smallest default point of a
model, this measures the cosine of int8 embeddings to the fp32 ONNX ones over real questions when
groups of weight products stay fp32 (``fastpath._quantize_int8(keep_fp32=...)``: the fused QKV
projection, the attention output, the FFN input or output, the first or last layer) and with
``reduce_range`` (7-bit weights). Correctness only: no timing, so it may run beside other work.

    HF_HUB_OFFLINE=1 python benchmarks/bench_int8_variants.py --model runs/nq-sample-main13/model \\
        --out benchmarks/results/int8_variants.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

GROUPS = {"all int8": (), "fp32 ffn_out": ("ffn_out",), "fp32 ffn_out+attn_out": ("ffn_out", "attn_out"),
          "fp32 ffn_in": ("ffn_in",), "fp32 qkv": ("qkv",)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2)")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA"))
    ap.add_argument("--questions", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from elasticdenser.data import load_collection
    from elasticdenser.model import fastpath
    from elasticdenser.model.encoder import ElasticEncoder

    enc = ElasticEncoder.from_pretrained(args.model)
    questions = [q.text for q in load_collection("nq-sample", args.data_dir).queries][: args.questions]

    def embed(model: bytes) -> np.ndarray:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = 1, 3
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        out = []
        for i in range(0, len(questions), 32):
            b = enc.tokenizer(questions[i : i + 32], padding=True, truncation=True, max_length=enc.max_length,
                              return_tensors="np")
            out.append(sess.run(None, {k: b[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0])
        return np.concatenate(out)

    res = {"model": args.model or "all-MiniLM-L6-v2", "questions": len(questions), "points": {}}
    points = enc.default_points()
    for p in (points[0], points[-1]):
        fp32 = fastpath._onnx_bytes(enc.materialize(p).eval(), fastpath._example_inputs(enc))
        ref = embed(fp32)
        rows = {}
        layers = {"fp32 first layer": ("layers.0/",), "fp32 last layer": (f"layers.{p.layers - 1}/",)}
        for name, keep in {**GROUPS, **layers}.items():
            for reduce_range in (False, True):
                cos = np.sum(embed(fastpath._quantize_int8(fp32, keep, reduce_range)) * ref, axis=1)
                label = name + (", reduce_range" if reduce_range else "")
                rows[label] = {"min": round(float(cos.min()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
                               "mean": round(float(cos.mean()), 6)}
                print(f"{p.name} | {label} | {rows[label]['min']:.5f} | {rows[label]['p1']:.5f} | {rows[label]['mean']:.6f}",
                      flush=True)
        res["points"][p.name] = rows
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
