"""``torchrun -m elasticdenser index``: one shard per rank (2 CPU processes, gloo), merged by rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def test_torchrun_index_equals_a_single_process_run(tmp_path, tiny_bert_dir, small_nq):
    from elasticdenser.index import encode as enc
    from elasticdenser.index import manifest as mf

    coll = small_nq(120, 4)
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n"
                                                 for d in coll.corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q.query_id, "text": q.text}) + "\n"
                                                  for q in coll.queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q.query_id}\t{next(iter(coll.qrels[q.query_id]))}\t1\n" for q in coll.queries))
    # one thread in both runs (torchrun's default per rank): the same batches then give the same bits
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [str(folder), "--model", str(tiny_bert_dir), "--chunk-size", "16", "--widths", "64,32", "--no-progress"]

    def run(*prefix, out):
        proc = subprocess.run([sys.executable, *prefix, "-m", "elasticdenser", "index", *args, "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    single = run(out=tmp_path / "single")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    shards = run(*launcher, out=tmp_path / "ranks")
    assert "shard 0/2" in shards and "shard 1/2" in shards and "shard 0/1" in single
    a, b = tmp_path / "single", tmp_path / "ranks"
    assert np.array_equal(np.load(a / enc.EMBEDDINGS), np.load(b / enc.EMBEDDINGS))
    assert (a / enc.DOC_IDS).read_bytes() == (b / enc.DOC_IDS).read_bytes()
    ma, mb = mf.load(a), mf.load(b)
    assert ma["embeddings"] == mb["embeddings"] and set(mb["indexes"]) == {"64", "32"}
    # a rank given its own shard is refused: torchrun decides the shards
    proc = subprocess.run([sys.executable, *launcher, "-m", "elasticdenser", "index", *args, "--out", str(b),
                           "--shard", "1", "--num-shards", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "set by torchrun" in proc.stdout + proc.stderr
