"""Elastic training end to end on a tiny random BERT and the real nq-sample corpus.

- training lowers the loss of every trained point;
- a run killed after a checkpoint and resumed equals an uninterrupted run;
- the leakage guard fires on a pool holding evaluation questions;
- each point's loss weight scales what that point trains;
- config is saved next to every checkpoint and the model.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elasticdenser.training.config import TrainConfig

POINTS = ["L4-H4-F128-D64", "L3-H3-F96-D48", "L2-H2-F64-D32"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nq(data_dir):
    """nq-sample cut to 300 documents + the positives of its 5 labelled train questions."""
    import elasticdenser.data as data
    from elasticdenser.data import Collection, Corpus

    full = data.load_collection("nq-sample", data_dir=data_dir)
    keep = {d for ids in full.train_positives.values() for d in ids}
    docs = [d for i, d in enumerate(full.corpus) if i < 300 or d.doc_id in keep]
    return Collection(
        name=full.name, corpus=Corpus(docs), queries=full.queries, qrels=full.qrels,
        train_queries=full.train_queries, train_positives=full.train_positives,
        held_out_questions=full.held_out_questions,
    )


@pytest.fixture(scope="module")
def pool(data_dir, nq):
    """Unlabeled pool questions through the data layer (leakage-guarded against nq-sample)."""
    import elasticdenser.data as data

    return list(data.load_query_pool(data_dir=data_dir, exclude=[nq], drop_overlap=True))[:400]


def tiny_config(tmp_path: Path, tiny_bert_dir, data_dir, **kw) -> TrainConfig:
    base = dict(
        model=str(tiny_bert_dir),
        output_dir=str(tmp_path / "run"),
        data_dir=str(data_dir),
        cache_dir=str(tmp_path.parent / "doc-cache"),
        collection="nq-sample",
        exclude=["nq-sample"],
        points=POINTS,
        sampling="fixed",
        doc_max_length=32,
        query_max_length=32,
        reorder_samples=16,
        batch_size=16,
        max_train_queries=11,  # + nq-sample's 5 labelled train questions = 16 = one batch
        val_size=16,
        steps=12,
        lr=2e-3,
        warmup_steps=1,
        log_every=1,
        checkpoint_every=6,
        eval_every=6,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def moved_weights(encoder, start_dir) -> set:
    """Names of the weights training changed from the start model's."""
    from elasticdenser.model.encoder import ElasticEncoder

    start = ElasticEncoder.from_pretrained(start_dir).model.state_dict()
    trained = encoder.model.state_dict()
    return {n for n in trained if not torch.equal(trained[n], start[n])}


def test_training_lowers_every_point_loss(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.training.loop import train

    cfg = tiny_config(tmp_path, tiny_bert_dir, data_dir, full_point="shared")  # the full point trained too
    res = train(cfg, collection=nq, pool=pool)
    # each step sees the same 16 questions (batch = whole training set), so step losses compare
    first, last = res.first_losses, res.last_losses
    assert set(first) == {"largest", "smallest", POINTS[1]}
    for key in first:
        assert last[key] < 0.8 * first[key], (key, first[key], last[key])
    out = Path(cfg.output_dir)
    assert (out / "model" / "train_config.yaml").is_file()
    assert (out / "train_config.yaml").is_file()
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "train_config.yaml").is_file() for c in ckpts)
    assert TrainConfig.load(out / "model" / "train_config.yaml") == cfg.validate()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert any('"type": "val"' in line and "recall@10" in line for line in lines)
    enc = ElasticEncoder.from_pretrained(out / "model")
    assert [p.name for p in enc.default_points()] == POINTS
    assert enc.reordered


def test_resume_equals_uninterrupted(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    from elasticdenser.training.loop import train

    kw = dict(sampling="sandwich", num_random=1, dropout=True, steps=6, checkpoint_every=3, eval_every=3,
              max_train_queries=60, batch_size=8)
    full = train(tiny_config(tmp_path / "a", tiny_bert_dir, data_dir, **kw), collection=nq, pool=pool)
    cfg_b = tiny_config(tmp_path / "b", tiny_bert_dir, data_dir, **kw)
    part = train(cfg_b, collection=nq, pool=pool, stop_after=3)  # "killed" after the step-3 checkpoint
    assert part.stopped_early and part.steps == 3
    assert not (Path(cfg_b.output_dir) / "model").exists()
    resumed = train(cfg_b, collection=nq, pool=pool)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert resumed.encoder.layer_order == full.encoder.layer_order  # restored from the checkpoint
    from elasticdenser.training.checkpoint import load_checkpoint_encoder

    basis = full.encoder.output_basis_sha
    assert basis is not None and resumed.encoder.output_basis_sha == basis
    assert load_checkpoint_encoder(Path(cfg_b.output_dir) / "checkpoints" / "step-6").output_basis_sha == basis
    a = full.encoder.model.state_dict()
    b = resumed.encoder.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert full.last_losses == pytest.approx(resumed.last_losses, rel=1e-5)


def test_leakage_guard_fires(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    from elasticdenser.data import LeakageError
    from elasticdenser.training.loop import train

    leaky = list(pool[:50]) + [nq.queries[0]]  # one nq-sample test question in the training pool
    cfg = tiny_config(tmp_path, tiny_bert_dir, data_dir)
    with pytest.raises(LeakageError):
        train(cfg, collection=nq, pool=leaky)
    assert not (Path(cfg.output_dir) / "model").exists()


def test_training_calls_the_data_layer_guard(monkeypatch, tmp_path, tiny_bert_dir, data_dir, nq):
    """With no explicit pool, the query pool comes from load_query_pool, guarded by config.exclude."""
    import elasticdenser.data as data
    from elasticdenser.training.data import load_training_data

    calls = {}

    def fake_pool(name="query-pool", data_dir=None, exclude=None, drop_overlap=False):
        calls.update(name=name, exclude=[getattr(e, "name", e) for e in exclude])
        raise data.LeakageError("overlap")

    monkeypatch.setattr(data, "load_query_pool", fake_pool)
    with pytest.raises(data.LeakageError):
        load_training_data(tiny_config(tmp_path, tiny_bert_dir, data_dir), collection=nq)
    assert calls == {"name": "query-pool", "exclude": ["nq-sample"]}


def test_static_trains_only_its_point(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    """A static baseline trains one shape: weights outside it stay as they started, the full point untouched.
    It is unweighted: its one point is both ends of the list, yet ``largest_weight=0`` still trains it."""
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.training.loop import train

    point = "L2-H2-F64-D32"
    cfg = tiny_config(tmp_path, tiny_bert_dir, data_dir, points=[point], static=True, reorder=False,
                      eval_every=0, checkpoint_every=0, largest_weight=0.0)
    res = train(cfg, collection=nq, pool=pool)
    assert set(res.first_losses) == {"largest"}  # one point: it is both ends of the list
    assert res.last_losses["largest"] < 0.8 * res.first_losses["largest"]
    moved = moved_weights(res.encoder, tiny_bert_dir)
    kept = res.encoder.layers_of(2)  # the two layers the greedy layer ordering chose
    assert moved and all(f".layer.{i}." not in n for i in range(4) if i not in kept for n in moved), (kept, sorted(moved))
    assert all(any(f".layer.{i}." in n for n in moved) for i in kept)
    assert point in [p.name for p in ElasticEncoder.from_pretrained(Path(cfg.output_dir) / "model").default_points()]
    with pytest.raises(ValueError, match="static"):
        TrainConfig(static=True).validate()


def test_point_weights_scale_each_point_loss(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    """``largest_weight=0``: only the smallest point's loss trains, so the layer the largest point
    alone runs keeps its start weights while the smallest point's layers move."""
    from elasticdenser.training.loop import train

    cfg = tiny_config(tmp_path, tiny_bert_dir, data_dir, steps=3, reorder=False, eval_every=0, checkpoint_every=0,
                      largest_weight=0.0, smallest_weight=1.0, weight_decay=0.0)
    res = train(cfg, collection=nq, pool=pool)  # the document tower serves L4: L3 is the largest trained point
    moved = moved_weights(res.encoder, tiny_bert_dir)
    only_largest = set(res.encoder.layers_of(3)) - set(res.encoder.layers_of(2))
    assert only_largest
    assert not {n for n in moved for i in only_largest if f".layer.{i}." in n}, sorted(moved)
    assert all(any(f".layer.{i}." in n for n in moved) for i in res.encoder.layers_of(2))


def test_output_basis_choices(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    """``pca`` (default) sets the corpus's principal basis; ``keep`` continues in the start model's;
    ``none`` trains plain truncation (no basis saved)."""
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.training.loop import train

    kw = dict(steps=2, checkpoint_every=0, eval_every=0, max_train_queries=11)
    pca = train(tiny_config(tmp_path / "pca", tiny_bert_dir, data_dir, **kw), collection=nq, pool=pool)
    assert pca.encoder.output_basis_sha is not None
    assert (pca.model_dir / "output_basis.npy").is_file()
    kept = train(tiny_config(tmp_path / "keep", tiny_bert_dir, data_dir, model=str(pca.model_dir), output_basis="keep",
                             **kw), collection=nq, pool=pool)
    assert kept.encoder.output_basis_sha == pca.encoder.output_basis_sha
    plain = train(tiny_config(tmp_path / "none", tiny_bert_dir, data_dir, model=str(pca.model_dir), output_basis="none",
                              **kw), collection=nq, pool=pool)
    assert plain.encoder.output_basis_sha is None and not (plain.model_dir / "output_basis.npy").exists()
    assert ElasticEncoder.from_pretrained(plain.model_dir).output_basis is None


def test_full_point_document_tower_spends_no_step_on_the_full_point(tmp_path, tiny_bert_dir, data_dir, nq, pool):
    """``full_point: document-tower``: the full point is not trained, the saved model serves it with
    the start model (its document tower), and the smaller points are trained."""
    import json

    import numpy as np

    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.operating_point import truncate
    from elasticdenser.training.loop import train

    res = train(tiny_config(tmp_path / "t", tiny_bert_dir, data_dir, steps=3, checkpoint_every=0, eval_every=0,
                            max_train_queries=11, full_point="document-tower"), collection=nq, pool=pool)
    summary = json.loads((Path(res.model_dir) / "training_summary.json").read_text())
    full = res.encoder.space.full
    assert full.name not in summary["points"]
    model = ElasticEncoder.from_pretrained(res.model_dir)
    assert model.full_point_tower == ElasticEncoder.from_pretrained(tiny_bert_dir).fingerprint()
    assert full in model.default_points()
    start = ElasticEncoder.from_pretrained(tiny_bert_dir)
    questions = ["who wrote the origin of species", "when did the berlin wall fall"]
    tower_in_basis = truncate(start.encode(questions, None), full.width, True, model.output_basis.numpy())
    np.testing.assert_allclose(model.encode(questions, None), tower_in_basis, atol=1e-5)
    np.testing.assert_allclose(res.encoder.encode(questions, None), tower_in_basis, atol=1e-5)  # as returned, too
    small = model.default_points()[-1]
    assert not np.allclose(model.encode(questions, small), start.encode(questions, small), atol=1e-4)
