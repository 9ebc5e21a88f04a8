"""Ad-hoc probe: torch.compile (dynamic=True) vs eager vs ONNX Runtime, smallest point, batch 1, 1 thread (issue 8).

    python benchmarks/bench_fastpath_compile.py
"""
import json
import os
import random
import statistics
import time

os.environ["HF_HUB_OFFLINE"]="1"
import torch

from elasticdenser.model import fastpath
from elasticdenser.model.encoder import ElasticEncoder

torch.set_num_threads(1)
enc = ElasticEncoder.from_pretrained()
p = enc.default_points()[-1]
qs = ["who sang the song i will always love you", "what is the capital city of australia", "when did the first iphone come out",
      "how many episodes are in season 5 of game of thrones"]
bs = [enc.tokenize([q]) for q in qs]
bs=[(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in bs]
m = enc.materialize(p)
res = {}
t=time.perf_counter()
c = torch.compile(m, dynamic=True)
with torch.inference_mode():
    c(*bs[0])
res["compile_dynamic_first_call_s"] = time.perf_counter()-t
t=time.perf_counter()
with torch.inference_mode():
    for b in bs:
        c(*b)
res["dynamic_other_lengths_s"] = time.perf_counter()-t
os.environ["ELASTICDENSER_CACHE"]="off"
r = fastpath.get_runner(enc, p, "onnx")
V={"eager": lambda b: m(*b), "compile_dyn": lambda b: c(*b), "onnx": lambda b: r(*b, threads=1)}
T={k:[] for k in V}
with torch.inference_mode():
    for i in range(60):
        ks=list(V)
        random.shuffle(ks)
        for k in ks:
            t=time.perf_counter()
            V[k](bs[i%4])
            T[k].append(time.perf_counter()-t)
res.update({k+"_b1_ms": statistics.median(v)*1e3 for k,v in T.items()})
print(json.dumps(res, indent=1))
