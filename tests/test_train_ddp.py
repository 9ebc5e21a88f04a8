"""Data-parallel elastic training: 2 CPU processes (gloo) via torchrun end with identical weights."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import os, sys, time, torch
    torch.set_num_threads(1)
    from elasticdenser.training import loop as training
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.loop import train

    if os.environ["RANK"] == "1":
        # rank 1 lags: rank 0 has written the document cache before rank 1 looks for it, which
        # must not make the ranks disagree on the collectives they enter
        _load = training.load_training_data
        def _slow_load(*a, **k):
            time.sleep(8)
            return _load(*a, **k)
        training.load_training_data = _slow_load

    cfg = TrainConfig.load(sys.argv[1])
    res = train(cfg)
    rank = int(os.environ["RANK"])
    torch.save(res.encoder.model.state_dict(), os.path.join(cfg.output_dir, f"rank{rank}.pt"))
    print("rank", rank, "world", os.environ["WORLD_SIZE"], "steps", res.steps, "losses", res.last_losses)
    """
)


def test_ddp_two_cpu_processes_identical_weights(tmp_path, tiny_bert_dir, data_dir):
    from elasticdenser.training.config import TrainConfig

    out = tmp_path / "ddp"
    cfg = TrainConfig(
        model=str(tiny_bert_dir), output_dir=str(out), data_dir=str(data_dir), collection="nq-sample",
        exclude=["nq-sample"], drop_overlap=True, use_collection_train=False, max_documents=200,
        max_train_queries=64, points=["L4-H4-F128-D64", "L2-H2-F64-D32"], sampling="sandwich", num_random=1,
        dropout=True, doc_max_length=32, query_max_length=32, reorder_samples=16, reorder_documents=64,
        batch_size=4, steps=3, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=0, eval_every=0,
        progress=False,
    )
    path = cfg.save(tmp_path / "cfg.yaml")
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    a = torch.load(out / "rank0.pt")
    b = torch.load(out / "rank1.pt")
    from elasticdenser.model.encoder import ElasticEncoder

    init = ElasticEncoder.from_pretrained(tiny_bert_dir).model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), f"ranks differ in {name}"
    # the model did train (weights moved; compare a permutation-invariant statistic)
    changed = any(abs(float(a[n].float().norm()) - float(init[n].float().norm())) > 1e-5 for n in a if n in init)
    assert changed
    assert (out / "model" / "train_config.yaml").is_file()
