"""Elastic training, fast unit tests: config round-trip, losses, point sampler, schedule."""
from __future__ import annotations

import math

import pytest
import torch

from elasticdenser.operating_point import ElasticSpace, OperatingPoint
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.losses import (
    ContrastiveLoss,
    EmbeddingAlignmentLoss,
    FixedDocuments,
    MatryoshkaLoss,
    ScoreDistillationLoss,
    matryoshka_widths,
)
from elasticdenser.training.sampling import PointSampler, lr_lambda

MINILM = ElasticSpace(num_layers=6, num_heads=12, intermediate_size=1536, hidden_size=384)


# ------------------------------------------------------------------ config

def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(steps=123, points=["L6-H12-F1536-D384", "L3-H6-F768-D192"], sampling="fixed", lr=3e-4)
    path = cfg.save(tmp_path)
    assert path.name == "train_config.yaml"
    again = TrainConfig.load(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_config_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 7\nsampling = "fixed"\nalign_kind = "mse"\nbf16 = true\nexclude = ["nq-sample", "scifact"]\n')
    cfg = TrainConfig.load(path)
    assert (cfg.steps, cfg.sampling, cfg.align_kind, cfg.bf16) == (7, "fixed", "mse", True)
    cfg2 = cfg.override(["distill_weight=0", "points=[L6-H12-F1536-D384]", "lr=1e-5"])
    assert cfg2.distill_weight == 0.0 and cfg2.points == ["L6-H12-F1536-D384"] and cfg2.lr == 1e-5


@pytest.mark.parametrize(
    "bad",
    [{"sampling": "random"}, {"mode": "both"}, {"steps": 0}, {"distill_temperature": 0},
     {"distill_weight": 0, "align_weight": 0, "contrastive_weight": 0}, {"no_such_key": 1},
     {"smallest_weight": -1}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig.from_dict(bad)


# ------------------------------------------------------------------ losses

def test_fixed_documents_truncate_and_renormalise():
    torch.manual_seed(0)
    docs = FixedDocuments(torch.nn.functional.normalize(torch.randn(10, 16), dim=-1))
    d8 = docs.at(8)
    assert d8.shape == (10, 8)
    assert torch.allclose(d8.norm(dim=-1), torch.ones(10), atol=1e-6)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert torch.allclose(docs.scores(q, 8), q @ d8.T)
    cand = torch.tensor([1, 4])
    assert torch.allclose(docs.scores(q, 8, cand), (q @ d8.T)[:, cand])


def test_distillation_is_zero_iff_distributions_match():
    s = torch.randn(4, 20)
    kl = ScoreDistillationLoss(0.05)
    assert float(kl(s, s)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl(s + 3.0, s)) == pytest.approx(0.0, abs=1e-5)  # shift-invariant
    assert float(kl(torch.randn(4, 20), s)) > 0


def test_alignment_losses():
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    assert float(EmbeddingAlignmentLoss("cosine")(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(EmbeddingAlignmentLoss("cosine")(a, -a)) == pytest.approx(2.0, abs=1e-5)
    assert float(EmbeddingAlignmentLoss("mse")(a, a)) == 0.0
    with pytest.raises(ValueError):
        EmbeddingAlignmentLoss("l1")


def test_contrastive_prefers_positive():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.1]])
    good = ContrastiveLoss(0.05)(scores, torch.tensor([0, 1]))
    bad = ContrastiveLoss(0.05)(scores, torch.tensor([2, 0]))
    assert float(good) < 0.01 < float(bad)


def test_matryoshka_loss_and_widths():
    seen = []
    loss = MatryoshkaLoss([384, 256, 192])(lambda w: (seen.append(w), torch.tensor(float(w)))[1])
    assert seen == [384, 256, 192]
    assert float(loss) == pytest.approx((384 + 256 + 192) / 3)
    assert matryoshka_widths(256, [384, 256, 192]) == [256, 192]
    assert matryoshka_widths(200, [384, 256, 192]) == [200, 192]
    assert matryoshka_widths(384, [384, 256, 192], enabled=False) == [384]


# ------------------------------------------------------------------ point sampler + schedule

def test_sandwich_sampler_bounds_and_determinism():
    pts = MINILM.default_points()
    s = PointSampler(MINILM, pts, "sandwich", num_random=3, seed=1)
    lo, hi = OperatingPoint.parse("L3-H6-F768-D192"), MINILM.full
    assert (s.largest, s.smallest) == (hi, lo)
    for step in range(50):
        got = s.sample(step)
        assert got[:2] == [hi, lo] and len(got) == 5
        for p in got[2:]:
            assert lo.layers <= p.layers <= hi.layers and lo.heads <= p.heads <= hi.heads
            assert lo.ffn <= p.ffn <= hi.ffn and p.ffn % 128 == 0
            assert p.width in (192, 256, 384)
        assert got == s.sample(step)  # a pure function of (seed, step): resume/rank safe
    assert len({tuple(s.sample(i)) for i in range(50)}) > 10


def test_fixed_sampler_returns_every_point():
    pts = MINILM.default_points()
    s = PointSampler(MINILM, pts, "fixed")
    assert sorted(s.sample(0)) == sorted(pts) and s.sample(0) == s.sample(99)


def test_point_weights_follow_the_sandwich_bounds():
    s = PointSampler(MINILM, MINILM.default_points(), "sandwich", num_random=1, seed=1)
    hi, lo, rnd = s.sample(0)
    assert [s.weight(p, largest=2.0, smallest=3.0) for p in (hi, lo, rnd)] == [2.0, 3.0, 1.0]


def test_lr_schedule():
    assert lr_lambda(0, 10, 100) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100) == pytest.approx(1.0)
    assert lr_lambda(100, 10, 100) == pytest.approx(0.0)
    assert lr_lambda(55, 10, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(70, 10, 100, "constant") == 1.0


# ------------------------------------------------------------------ CLI

def test_cli_train_resolves_config(tmp_path, capsys):
    import yaml

    from elasticdenser.cli import main

    cfg = tmp_path / "c.yaml"
    TrainConfig(steps=9, sampling="fixed").save(cfg)
    rc = main(["train", "--config", str(cfg), "--steps", "5", "--points", "L6-H12-F1536-D384,L3-H6-F768-D192",
               "--set", "lr=0.001", "align_kind=mse", "--print-config"])
    assert rc == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert got["steps"] == 5 and got["sampling"] == "fixed" and got["lr"] == 0.001 and got["align_kind"] == "mse"
    assert got["points"] == ["L6-H12-F1536-D384", "L3-H6-F768-D192"]


def test_cli_train_bad_config_is_a_clean_error(tmp_path, capsys):
    from elasticdenser.cli import main

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "--set", "sampling=everything", "--print-config"]) == 2
    assert "sampling must be one of" in capsys.readouterr().err


def test_the_optimiser_is_fused_where_torch_has_the_kernel_and_a_resume_keeps_it():
    """Weight decay per group survives; a checkpoint of the default (unfused) optimiser resumes on the
    fused kernel with the same updates, instead of switching the run back to the slower loop."""
    import copy

    from elasticdenser.training.optim import adamw, load_optimizer_state

    torch.manual_seed(0)
    grads = [(torch.randn(6, 4), torch.randn(4)) for _ in range(5)]
    w, b = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))

    def groups(wt, bt):
        return [{"params": [wt], "weight_decay": 0.1}, {"params": [bt], "weight_decay": 0.0}]

    def step(opt, wt, bt, g):
        wt.grad, bt.grad = g[0].clone(), g[1].clone()
        opt.step()

    fused = torch.__version__ >= (2, 4)  # torch's CPU kernel
    assert [(g["weight_decay"], bool(g["fused"])) for g in adamw(groups(w, b), lr=1e-2).param_groups] == [
        (0.1, fused), (0.0, fused)]
    old = torch.optim.AdamW(groups(w, b), lr=1e-2)  # as written before this optimiser
    for g in grads[:2]:
        step(old, w, b, g)
    w2, b2 = torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(b.detach().clone())
    new = adamw(groups(w2, b2), lr=1e-2)
    load_optimizer_state(new, copy.deepcopy(old.state_dict()))
    assert [bool(g["fused"]) for g in new.param_groups] == [fused, fused]
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0]
    for g in grads[2:]:
        step(old, w, b, g)
        step(new, w2, b2, g)
    torch.testing.assert_close(w2, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b2, b, rtol=1e-5, atol=1e-6)
