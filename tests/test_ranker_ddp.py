"""``torchrun -m elasticdenser train-ranker``: 2 CPU ranks (gloo) train the single-process ranker."""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def test_two_ranks_train_the_ranker_one_process_trains_with_the_same_global_batch(tmp_path, tiny_encoder, minilm_path,
                                                                                  data_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from elasticdenser.data import load_collection
    from elasticdenser.index import build
    from elasticdenser.model.ranker import ElasticRanker

    torch.manual_seed(0)
    ce = tmp_path / "ce"  # no dropout: a 2-rank step and a 1-process step then see the same computation
    BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                             intermediate_size=128, max_position_embeddings=128, num_labels=1,
                                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(ce)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(ce)
    coll = load_collection("squad-sample-test", data_dir)
    exp = tmp_path / "exp"
    build.build_experiment(tiny_encoder, list(coll.corpus)[:150], exp, collection=coll.name, chunk_size=64, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    common = [str(exp), "--collection", "squad-sample-test", "--data-dir", str(data_dir), "--model", str(ce),
              "--teacher-steps", "2", "--steps", "2", "--no-progress", "--set", "list_size=4", "candidates=8",
              "max_length=64", "teacher_lr=1e-3", "lr=1e-3", "max_queries=40",
              # importance order off: near-tied neurons may swap on weights that differ by rounding
              "reorder_lists=0"]

    def run(*launcher, out, batch):
        proc = subprocess.run([sys.executable, *launcher, "-m", "elasticdenser", "train-ranker", *common,
                               f"batch_size={batch}", "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return ElasticRanker.from_pretrained(out / "model")

    ranks = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", out=tmp_path / "ddp", batch=1)
    single = run(out=tmp_path / "one", batch=2)
    start = ElasticRanker.from_pretrained(ce)
    diffs, moves = [], []
    for (name, a), b, s in zip(ranks.hf.state_dict().items(), single.hf.state_dict().values(),
                               start.hf.state_dict().values()):
        # a listwise loss does not depend on the logit's bias at all, so its "gradient" is rounding alone
        if name == "classifier.bias":
            continue
        # Adam's first steps are about lr * sign(gradient): where rounding decides a near-zero gradient's
        # sign (summed over 2 ranks or over 1 batch), a weight moves up to 2 lr differently. Per weight,
        # 0.3 lr (3e-4) bounds what the CPUs seen so far give (0.14 lr, a pooler bias, on AVX-512)...
        torch.testing.assert_close(a, b, atol=3e-4, rtol=1e-4, msg=f"2 ranks and 1 process differ in {name}")
        diffs.append((a.float() - b.float()).abs().flatten())
        moves.append((a.float() - s.float()).abs().flatten())
    # ...and over all weights the two runs agree a thousand times closer than training moved them
    # (measured ~4e-5 of it): a rank that trained on other data, or alone, differs by about the move itself
    moved = torch.cat(moves).mean()
    assert moved > 0 and torch.cat(diffs).mean() < 1e-3 * moved
    assert not list((tmp_path / "ddp").glob("**/*.tmp*"))
