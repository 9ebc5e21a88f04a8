"""ElasticRanker mechanics on tiny random-weight cross-encoders built in the test (HF layouts)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from elasticdenser.errors import InvalidInputError
from elasticdenser.model.loading import UnsupportedModelError
from elasticdenser.model.ranker import ElasticRanker
from elasticdenser.operating_point import OperatingPoint

PAIRS = [("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare."),
         ("capital of france", "Paris is the capital and largest city of France."),
         ("capital of france", "Berlin is the capital of Germany, a country in Europe with many rivers."),
         ("boiling point of water", "cats sleep")]


def _config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=128, **kw)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory, minilm_path):
    """The layout of cross-encoder/ms-marco-MiniLM-L-6-v2: BertForSequenceClassification, one label."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    BertForSequenceClassification(_config(num_labels=1)).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def _hf_logits(model, ranker, pairs):
    batch = ranker.tokenize_pairs([q for q, _ in pairs], [d for _, d in pairs])
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1).numpy()


def _cut(linear, rows=None, cols=None):
    """A copy of ``linear`` keeping its first ``rows`` outputs / first ``cols`` inputs."""
    w = linear.weight[:rows, :cols]
    cut = torch.nn.Linear(w.shape[1], w.shape[0])
    cut.weight.data, cut.bias.data = w.clone(), linear.bias[:rows].clone()
    return cut


def _pruned_reference(ranker, point):
    """The HF model made physically smaller (layers dropped, the last heads' projections and the
    last FFN neurons cut) and run by HF's own forward: an independent reference for the sliced path."""
    ref = copy.deepcopy(ranker.hf).eval()
    keep = ranker.encoder.layers_of(point.layers)
    ref.bert.encoder.layer = torch.nn.ModuleList(ref.bert.encoder.layer[i] for i in keep)
    a = point.heads * ranker.encoder.head_dim
    for layer in ref.bert.encoder.layer:
        sa = layer.attention.self
        sa.query, sa.key, sa.value = (_cut(sa.query, a), _cut(sa.key, a), _cut(sa.value, a))
        layer.attention.output.dense = _cut(layer.attention.output.dense, cols=a)
        layer.intermediate.dense = _cut(layer.intermediate.dense, point.ffn)
        layer.output.dense = _cut(layer.output.dense, cols=point.ffn)
    return ref


def test_full_point_is_the_hf_cross_encoder(cross_encoder_dir):
    from transformers import AutoModelForSequenceClassification

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    assert not ranker.new_head
    hf = AutoModelForSequenceClassification.from_pretrained(cross_encoder_dir).eval()
    np.testing.assert_allclose(ranker.score_pairs(PAIRS), _hf_logits(hf, ranker, PAIRS), atol=1e-5)
    # one query against several passages is the same as the pairs
    np.testing.assert_allclose(ranker.score(PAIRS[1][0], [PAIRS[1][1], PAIRS[2][1]]), ranker.score_pairs(PAIRS[1:3]))


def test_every_point_equals_the_hf_model_pruned_to_it(cross_encoder_dir):
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    ranker.encoder.layer_order = [2, 0, 3, 1]  # a chosen layer order, not bottom-up
    points = ranker.default_points()
    assert len(points) >= 3 and all(p.width == 64 for p in points)
    scores = {}
    for p in points:
        scores[p] = ranker.score_pairs(PAIRS, p)
        np.testing.assert_allclose(scores[p], _hf_logits(_pruned_reference(ranker, p), ranker, PAIRS), atol=1e-5)
    assert len({tuple(np.round(s, 4)) for s in scores.values()}) == len(points)  # the points differ


def test_save_load_keeps_a_standard_cross_encoder_and_the_elastic_state(cross_encoder_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from elasticdenser.model.encoder import ElasticEncoder

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    ranker.encoder.layer_order = [1, 0, 2, 3]
    ranker.encoder.set_points(["L2-H2-F64-D64"])
    small = ranker.default_points()[-1]
    saved = ranker.save_pretrained(tmp_path / "ranker")
    again = ElasticRanker.from_pretrained(saved)
    assert again.fingerprint() == ranker.fingerprint() and again.default_points() == ranker.default_points()
    np.testing.assert_allclose(again.score_pairs(PAIRS, small), ranker.score_pairs(PAIRS, small), atol=1e-6)
    plain = AutoModelForSequenceClassification.from_pretrained(saved).eval()  # what any other tool reads
    np.testing.assert_allclose(_hf_logits(plain, ranker, PAIRS), ranker.score_pairs(PAIRS), atol=1e-5)
    with pytest.raises(InvalidInputError, match="ElasticRanker"):
        ElasticEncoder.from_pretrained(saved)
    ranker.hf.classifier.weight.data += 0.1
    assert ranker.fingerprint() != again.fingerprint()  # the head is part of the fingerprint


def test_an_encoder_checkpoint_starts_a_ranker_with_a_new_head(tiny_bert_dir, tmp_path):
    ranker = ElasticRanker.from_pretrained(tiny_bert_dir)
    assert ranker.new_head and ranker.score_pairs(PAIRS).shape == (4,)
    enc_dir = tmp_path / "encoder"
    from elasticdenser.model.encoder import ElasticEncoder

    ElasticEncoder.from_pretrained(tiny_bert_dir).save_pretrained(enc_dir)
    with pytest.raises(InvalidInputError, match="query encoder, not a ranker"):
        ElasticRanker.from_pretrained(enc_dir)


def test_unsupported_heads_and_architectures_are_refused(tmp_path, minilm_path):
    from transformers import AutoTokenizer, BertForSequenceClassification, DistilBertConfig, DistilBertModel

    two = tmp_path / "two-labels"
    BertForSequenceClassification(_config(num_labels=2)).save_pretrained(two)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(two)
    with pytest.raises(UnsupportedModelError, match="2 labels"):
        ElasticRanker.from_pretrained(two)
    distil = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(distil)
    with pytest.raises(UnsupportedModelError, match="distilbert"):
        ElasticRanker.from_pretrained(distil)


def test_points_that_cut_the_width_and_bad_pairs_are_refused(cross_encoder_dir):
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    with pytest.raises(InvalidInputError, match="full width"):
        ranker.score_pairs(PAIRS, "L2-H2-F64-D32")
    with pytest.raises(InvalidInputError, match="pair 1"):
        ranker.score_pairs([("q", "d"), ("q", None)])
    assert ranker.score_pairs([]).shape == (0,)


def test_fast_path_scores_match_the_sliced_path(cross_encoder_dir):
    pytest.importorskip("onnxruntime")
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    for p in (ranker.default_points()[0], ranker.default_points()[-1]):
        np.testing.assert_allclose(ranker.score_pairs(PAIRS, p, backend="onnx"), ranker.score_pairs(PAIRS, p), atol=1e-4)


def test_gradients_flow_into_the_shared_weights_from_a_small_point(cross_encoder_dir):
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    ranker.train(True)
    small = ranker.default_points()[-1]
    batch = ranker.tokenize_pairs([q for q, _ in PAIRS], [d for _, d in PAIRS])
    ranker(batch["input_ids"], batch["attention_mask"], small, batch["token_type_ids"]).sum().backward()
    grads = {n: p.grad for n, p in ranker.hf.named_parameters()}
    assert grads["classifier.weight"].abs().sum() > 0 and grads["bert.pooler.dense.weight"].abs().sum() > 0
    g = grads[f"bert.encoder.layer.{ranker.encoder.layers_of(small.layers)[0]}.intermediate.dense.weight"]
    assert small.ffn < g.shape[0]  # the neurons a small point drops get no gradient
    assert g[: small.ffn].abs().sum() > 0 and g[small.ffn:].abs().sum() == 0
    # and a point that cuts depth leaves the layers it drops untouched
    ranker.hf.zero_grad(set_to_none=True)
    shallow = OperatingPoint(2, small.heads, small.ffn, small.width)
    ranker(batch["input_ids"], batch["attention_mask"], shallow, batch["token_type_ids"]).sum().backward()
    grads = {n: p.grad for n, p in ranker.hf.named_parameters()}
    used = ranker.encoder.layers_of(shallow.layers)[0]
    unused = sorted(set(range(4)) - set(ranker.encoder.layers_of(shallow.layers)))[0]
    assert grads[f"bert.encoder.layer.{used}.intermediate.dense.weight"][: shallow.ffn].abs().sum() > 0
    g = grads[f"bert.encoder.layer.{unused}.intermediate.dense.weight"]
    assert g is None or g.abs().sum() == 0


def test_token_states_of_a_point_are_the_pruned_models_and_distilling_them_pulls_a_small_point_closer(cross_encoder_dir):
    from elasticdenser.training.ranker import _state_loss

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    teacher = copy.deepcopy(ranker)
    small = ranker.default_points()[-1]
    batch = ranker.tokenize_pairs([q for q, _ in PAIRS], [d for _, d in PAIRS])
    args = (batch["input_ids"], batch["attention_mask"], small, batch["token_type_ids"])
    with torch.no_grad():
        logits, states = ranker.logits_and_states(*args)
        ref = _pruned_reference(ranker, small)(**batch, output_hidden_states=True).hidden_states[-1]
        np.testing.assert_allclose(states.numpy(), ref.numpy(), atol=1e-5)
        np.testing.assert_allclose(logits.numpy(), ranker(*args).numpy())
        _, full_states = teacher.logits_and_states(batch["input_ids"], batch["attention_mask"], None,
                                                   batch["token_type_ids"])
    mask = batch["attention_mask"]
    assert float(_state_loss(full_states, full_states, mask)) == 0.0
    # padding does not count: garbage in padded positions leaves the loss unchanged
    noisy = full_states.clone()
    noisy[mask == 0] += 100.0
    assert float(_state_loss(noisy, full_states, mask)) == 0.0 and (mask == 0).any()
    before = float(_state_loss(states, full_states, mask))
    optimizer = torch.optim.SGD(ranker.hf.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        _state_loss(ranker.logits_and_states(*args)[1], full_states, mask).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(_state_loss(ranker.logits_and_states(*args)[1], full_states, mask))
    assert before > 0 and after < 0.9 * before


# --- training and reranking end to end on a small real collection ---------------------------------
@pytest.fixture(scope="module")
def squad_small(data_dir, tmp_path_factory):
    """The first 120 paragraphs of squad-sample-test (real text, its article split kept), as a BEIR
    folder: test questions of odd articles, training questions of even ones (qrels/train.tsv)."""
    from elasticdenser.data import load_collection
    from elasticdenser.data.export import export_collection
    from elasticdenser.data.types import Collection, Corpus

    full = load_collection("squad-sample-test", data_dir)
    docs = list(full.corpus)[:120]
    keep = {d.doc_id for d in docs}
    test = [q for q in full.queries if next(iter(full.qrels[q.query_id])) in keep][:30]
    train = [q for q in full.train_queries if full.train_positives[q.query_id][0] in keep][:60]
    small = Collection("squad-small", Corpus(docs), test, {q.query_id: full.qrels[q.query_id] for q in test},
                       train_queries=train, train_positives={q.query_id: full.train_positives[q.query_id] for q in train})
    out = tmp_path_factory.mktemp("squad-small")
    export_collection(small, out)
    return out


def test_train_ranker_resume_and_rerank_end_to_end(squad_small, cross_encoder_dir, tiny_encoder, tmp_path, one_thread):
    from elasticdenser.data import load_collection
    from elasticdenser.eval.metrics import evaluate
    from elasticdenser.index import build
    from elasticdenser.searcher import Searcher
    from elasticdenser.training.ranker import RankerConfig, train_ranker

    coll = load_collection(str(squad_small))
    assert coll.train_queries and coll.queries
    exp = tmp_path / "exp"
    build.build_experiment(tiny_encoder, coll.corpus, exp, collection=coll.name, chunk_size=64, progress=False)
    cfg = RankerConfig(model=str(cross_encoder_dir), collection=str(squad_small), experiment=str(exp),
                       output_dir=str(tmp_path / "ranker"), teacher_steps=6, steps=4, batch_size=2, list_size=4,
                       candidates=8, max_length=96, checkpoint_every=2, teacher_lr=1e-3, lr=1e-3, reorder_layers=True,
                       hidden_weight=0.5)
    model = train_ranker(cfg, Searcher.open(exp), progress=False)
    summary = json.loads((model / "ranker_summary.json").read_text())
    assert summary["questions"] == len(coll.train_queries) and summary["phases"]["elastic"]["steps"] == 4
    assert (tmp_path / "ranker" / "teacher" / "config.json").is_file()
    # the first stage's weight per point, chosen on held-out labelled lists, is saved with the ranker
    chosen = summary["first_stage_weights"]
    names = [p.name for p in ElasticRanker.from_pretrained(model).default_points()]
    assert chosen["dev_lists"] > 0 and all(str(chosen[n]["weight"]) in chosen[n]["by_weight"] for n in names)
    assert ElasticRanker.from_pretrained(model).first_stage_weights == {n: chosen[n]["weight"] for n in names}
    # a resumed run: kill after the teacher, start again -> the same final weights
    again = cfg.replace(output_dir=str(tmp_path / "ranker2"))
    import shutil

    shutil.copytree(tmp_path / "ranker" / "teacher", tmp_path / "ranker2" / "teacher")
    resumed = train_ranker(again, Searcher.open(exp), progress=False)
    assert ElasticRanker.from_pretrained(resumed).fingerprint() == ElasticRanker.from_pretrained(model).fingerprint()
    # the same run without hidden-state distillation ends elsewhere: hidden_weight reaches the loss
    plain = cfg.replace(output_dir=str(tmp_path / "ranker-plain"), hidden_weight=0.0)
    shutil.copytree(tmp_path / "ranker" / "teacher", tmp_path / "ranker-plain" / "teacher")
    without = train_ranker(plain, Searcher.open(exp), progress=False)
    # a fixed first_stage_weight is recorded for every point, with no lists held out to choose it
    fixed = cfg.replace(output_dir=str(tmp_path / "ranker-fixed"), steps=1, first_stage_weight=0.3)
    shutil.copytree(tmp_path / "ranker" / "teacher", tmp_path / "ranker-fixed" / "teacher")
    fixed_model = train_ranker(fixed, Searcher.open(exp), progress=False)
    assert ElasticRanker.from_pretrained(fixed_model).first_stage_weights == {n: 0.3 for n in names}
    assert "first_stage_weights" not in json.loads((fixed_model / "ranker_summary.json").read_text())
    assert ElasticRanker.from_pretrained(without).fingerprint() != ElasticRanker.from_pretrained(model).fingerprint()
    # the point weights reach the elastic loss: with one of the two sandwich points weighted 0, the FFN
    # neurons only the largest point runs stay at the teacher's values exactly when the largest is the one at 0
    teacher_ffn = ElasticRanker.from_pretrained(tmp_path / "ranker" / "teacher").hf.bert.encoder.layer[0].intermediate
    cut = ElasticRanker.from_pretrained(model).default_points()[-1].ffn
    for largest, smallest in ((0.0, 1.0), (1.0, 0.0)):
        run = cfg.replace(output_dir=str(tmp_path / f"ranker-w{largest:g}"), steps=1, num_random=0, reorder_lists=0,
                          weight_decay=0.0, first_stage_weight=0.0, largest_weight=largest, smallest_weight=smallest)
        shutil.copytree(tmp_path / "ranker" / "teacher", tmp_path / f"ranker-w{largest:g}" / "teacher")
        trained = ElasticRanker.from_pretrained(train_ranker(run, Searcher.open(exp), progress=False))
        ffn = trained.hf.bert.encoder.layer[0].intermediate
        beyond = torch.equal(ffn.dense.weight[cut:], teacher_ffn.dense.weight[cut:])
        within = torch.equal(ffn.dense.weight[:cut], teacher_ffn.dense.weight[:cut])
        assert (beyond, within) == ((True, False) if largest == 0 else (False, False)), (largest, beyond, within)
    # a static run is unweighted: its one point is both ends of the list, yet largest_weight=0 still trains it
    smallest = ElasticRanker.from_pretrained(model).default_points()[-1].name
    run = cfg.replace(output_dir=str(tmp_path / "ranker-static"), steps=1, static=True, points=[smallest], reorder_lists=0,
                      weight_decay=0.0, first_stage_weight=0.0, largest_weight=0.0)
    shutil.copytree(tmp_path / "ranker" / "teacher", tmp_path / "ranker-static" / "teacher")
    static = ElasticRanker.from_pretrained(train_ranker(run, Searcher.open(exp), progress=False))
    ffn = static.hf.bert.encoder.layer[0].intermediate
    assert not torch.equal(ffn.dense.weight[:cut], teacher_ffn.dense.weight[:cut])
    # killed inside the elastic phase, right after its step-2 checkpoint: resumed from it, same weights
    from elasticdenser.training import ranker as trainer

    save = trainer._save_state

    def save_then_die(out, ranker, optimizer, scheduler, phase, step, keep):
        save(out, ranker, optimizer, scheduler, phase, step, keep)
        if phase == "elastic":
            raise KeyboardInterrupt

    third = cfg.replace(output_dir=str(tmp_path / "ranker3"))
    trainer._save_state = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_ranker(third, Searcher.open(exp), progress=False)
    finally:
        trainer._save_state = save
    final = train_ranker(third, Searcher.open(exp), progress=False)
    assert json.loads((final / "ranker_summary.json").read_text())["phases"]["elastic"]["resumed_at"] == 2
    assert ElasticRanker.from_pretrained(final).fingerprint() == ElasticRanker.from_pretrained(model).fingerprint()

    searcher = Searcher.open(exp, ranker=model)
    searcher.ranker.first_stage_weights = {}  # the logit alone first
    plain = searcher.search(coll.queries[0].text, k=5, point="full")
    reranked = searcher.search(coll.queries[0].text, k=5, point="full", rerank=8)
    small = searcher.ranker.default_points()[-1]
    assert plain.ranker_point is None and reranked.ranker_point == searcher.ranker.resolve_point(None)
    assert reranked.rerank_depth == 8 and len(reranked.hits) == 5
    scores = [h.score for h in reranked.hits]
    assert scores == sorted(scores, reverse=True)
    top8 = {h.doc_id for h in searcher.search(coll.queries[0].text, k=8, point="full").hits}
    assert {h.doc_id for h in reranked.hits} <= top8  # reranking reorders the first stage's candidates
    logits = searcher.ranker.score(coll.queries[0].text, [f"{h.title} {h.text}".strip() for h in reranked.hits])
    np.testing.assert_allclose(scores, logits, atol=1e-4)
    run = searcher.batch_search(coll.queries, k=10, point="full", rerank=8, ranker_point=small)
    assert run.name == f"{searcher.resolve_point('full').name}+{small.name}@8"
    first = run.to_dict()[coll.queries[0].query_id]
    single = searcher.search(coll.queries[0].text, k=10, point="full", rerank=8, ranker_point=small)
    assert [h.doc_id for h in single.hits] == sorted(first, key=lambda d: -first[d])  # search == batch_search
    assert 0.0 <= evaluate(coll.qrels, run, ["ndcg@10"])["ndcg@10"] <= 1.0
    # with a first-stage weight: 1 keeps the first stage's order, 0.5 scores the interpolation, in both paths
    from elasticdenser.rerank import interpolate

    q = coll.queries[0]
    dense = searcher.search(q.text, k=8, point="full").hits
    searcher.ranker.first_stage_weights = {small.name: 1.0}
    assert [h.doc_id for h in searcher.search(q.text, k=8, point="full", rerank=8, ranker_point=small).hits] == \
        [h.doc_id for h in dense]
    first = searcher.batch_search([q], k=8, point="full", rerank=8, ranker_point=small).to_dict()[q.query_id]
    assert sorted(first, key=lambda d: -first[d]) == [h.doc_id for h in dense]
    searcher.ranker.first_stage_weights = {small.name: 0.5}
    mixed = searcher.search(q.text, k=8, point="full", rerank=8, ranker_point=small).hits
    want = interpolate(searcher.ranker.score(q.text, [h.contents for h in dense], small), [h.score for h in dense], 0.5)
    np.testing.assert_allclose([h.score for h in mixed], sorted(want, reverse=True), atol=1e-4)
    first = searcher.batch_search([q], k=8, point="full", rerank=8, ranker_point=small).to_dict()[q.query_id]
    assert sorted(first, key=lambda d: -first[d]) == [h.doc_id for h in mixed]
    with pytest.raises(InvalidInputError, match="rerank depth"):
        searcher.search("x", rerank=-1)
    from elasticdenser.errors import StateError

    with pytest.raises(StateError, match="needs a ranker"):
        Searcher.open(exp).search("x", rerank=5)


def test_ranker_config_is_checked_and_needs_a_first_stage(tmp_path):
    from elasticdenser.training.ranker import RankerConfig

    with pytest.raises(InvalidInputError, match="experiment"):
        RankerConfig().validate()
    with pytest.raises(InvalidInputError, match="list_size"):
        RankerConfig(experiment="x", list_size=1).validate()
    with pytest.raises(InvalidInputError, match="steps must be an integer"):
        RankerConfig(experiment="x").override(["steps=true"])
    with pytest.raises(InvalidInputError, match="first_stage_weight"):
        RankerConfig(experiment="x", first_stage_weight=1.5).validate()
    path = RankerConfig(experiment="x", steps=7).save(tmp_path)
    assert path.name == "ranker_config.yaml" and RankerConfig.load(path).steps == 7


def test_cli_train_ranker_then_evaluate_with_reranked_rows(squad_small, cross_encoder_dir, build_tiny_experiment,
                                                            tmp_path, one_thread):
    from elasticdenser.cli import main
    from elasticdenser.data import load_collection

    exp = build_tiny_experiment(load_collection(str(squad_small)))
    out = tmp_path / "ranker"
    assert main(["train-ranker", str(exp), "--collection", str(squad_small), "--model", str(cross_encoder_dir),
                 "--out", str(out), "--teacher-steps", "2", "--steps", "2", "--no-progress",
                 "--set", "batch_size=2", "list_size=3", "candidates=5", "max_length=64"]) == 0
    assert (out / "model" / "elastic_config.json").is_file() and (out / "ranker_config.yaml").is_file()
    report = tmp_path / "report"
    assert main(["evaluate", str(exp), str(squad_small), "--points", "full", "--ranker", str(out / "model"),
                 "--rerank", "5", "--ranker-points", "full,L2-H2-F64-D64", "--k", "10", "--out", str(report)]) == 0
    rows = json.loads((report / "metrics.json").read_text())["rows"]
    names = [r["point"] for r in rows]
    assert len(rows) == 3 and names[1].endswith("+L4-H4-F128-D64@5") and names[2].endswith("+L2-H2-F64-D64@5")
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert rows[1]["ndcg@10"] != rows[2]["ndcg@10"] or rows[1]["mrr@10"] != rows[2]["mrr@10"]
    # a ranker point that cuts the width is refused with exit 2, naming the rule
    assert main(["evaluate", str(exp), str(squad_small), "--points", "full", "--ranker", str(out / "model"),
                 "--ranker-points", "L2-H2-F64-D32", "--out", str(tmp_path / "bad")]) == 2


# --- the two-stage profile and the router over both stages ------------------------------------------
def _two_stage_profile(query_points, ranker_points, depth=5):
    """Synthetic but shaped like a real one: reranking costs more and scores better."""
    from elasticdenser.operating_point import ServingConfig
    from elasticdenser.serve.profile import PointProfile, Profile, mark_pareto

    entries = {}
    for i, qp in enumerate(query_points):
        q_ms = 4.0 / (i + 1)
        entries[qp.name] = PointProfile(qp.name, {b: {"median": q_ms * b, "p90": q_ms * b * 1.1} for b in (1, 2, 4)},
                                        {"ndcg@10": 0.60 - 0.05 * i})
        for j, rp in enumerate(ranker_points):
            r_ms = 20.0 / (j + 1)
            name = ServingConfig(qp, rp, depth).name
            entries[name] = PointProfile(name, {b: {"median": (q_ms + r_ms) * b, "p90": (q_ms + r_ms) * b * 1.1}
                                                for b in (1, 2, 4)}, {"ndcg@10": 0.75 - 0.05 * i - 0.03 * j})
    mark_pareto(entries.values(), "ndcg@10")
    return Profile(entries, "ndcg@10", batch_sizes=[1, 2, 4])


def test_router_over_both_stages_reranks_at_low_load_and_drops_the_ranker_under_overload(cross_encoder_dir):
    from elasticdenser.serve.router import Router, RouterConfig

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    from elasticdenser.operating_point import OperatingPoint

    qps_ = [OperatingPoint.parse("L4-H4-F128-D64"), OperatingPoint.parse("L2-H2-F64-D32")]
    profile = _two_stage_profile(qps_, ranker.default_points())
    router = Router(profile, RouterConfig(slo_ms=100, step_up_after_s=0.0))
    low = router.choose_config(1, 0.0)
    assert low.ranker == ranker.default_points()[0] and low.query == qps_[0] and low.depth == 5
    t = 1.0
    for _ in range(3000):  # 3000 q/s: beyond every reranking configuration's capacity
        router.admit(0, t)
        t += 1 / 3000
    busy = router.choose_config(1, t)
    assert busy.ranker is None and busy.query == qps_[-1]
    assert router.choose(1, t) == busy.query  # choose() is the query point of the same decision


def test_joint_profile_measured_and_served_by_the_routed_service(squad_small, cross_encoder_dir, build_tiny_experiment,
                                                                 one_thread):
    from elasticdenser.data import load_collection
    from elasticdenser.operating_point import ServingConfig
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.measure import measure_profile
    from elasticdenser.serve.measure_ranker import add_ranker_profile
    from elasticdenser.serve.router import RouterConfig
    from elasticdenser.serve.service import RoutedSearcher

    coll = load_collection(str(squad_small))
    searcher = Searcher.open(build_tiny_experiment(coll), ranker=cross_encoder_dir)
    searcher.ranker.first_stage_weights = {searcher.ranker.default_points()[-1].name: 0.5}  # one point interpolates
    queries = coll.queries[:12]
    prof = measure_profile(searcher, queries, coll.qrels, batch_sizes=[1, 2, 4], repeats=1, points=searcher.points[:2])
    prof = add_ranker_profile(prof, searcher, queries, coll.qrels, depths=[5], repeats=1,
                              ranker_points=[searcher.ranker.default_points()[0], searcher.ranker.default_points()[-1]])
    joint = [p for p in prof.points.values() if p.config.ranker is not None]
    assert len(joint) == 2 * 2 and prof.extra["ranker_fingerprint"] == searcher.ranker.fingerprint()
    for entry in joint:
        alone = prof[entry.config.query.name]
        assert all(entry.service_ms(b) > alone.service_ms(b) for b in (1, 2, 4, 8))
        # the measured quality is what the searcher's own reranked results score
        cfg = entry.config
        hits = searcher.search_texts([q.text for q in queries], 10, cfg.query, rerank=cfg.depth, ranker_point=cfg.ranker)
        from elasticdenser.serve.measure import quality_of_hits

        assert quality_of_hits(hits, queries, coll.qrels, 10)["ndcg@10"] == pytest.approx(entry.quality["ndcg@10"], abs=1e-6)
    # the routed service serves a joint configuration end to end when the router picks one
    best = _two_stage_profile(searcher.points[:2], searcher.ranker.default_points())
    with RoutedSearcher(searcher, profile=best, config=RouterConfig(slo_ms=500)) as svc:
        res = svc.search(queries[0].text, k=3, timeout=30)
        assert isinstance(res.config, ServingConfig) and res.config.ranker is not None and res.config.depth == 5
        direct = searcher.search(queries[0].text, k=3, point=res.config.query, rerank=5, ranker_point=res.config.ranker)
        assert [h.doc_id for h in res.hits] == [h.doc_id for h in direct.hits]
        assert res.config.name in svc.metrics_text()
    # ... and so does the real in-process replay (`simulate --mode inprocess --ranker`)
    from elasticdenser.serve import replay

    run = replay.run_real_inprocess([0.0, 0.1, 0.2, 0.3], searcher, best, "router", [q.text for q in queries],
                                    RouterConfig(slo_ms=500), k=3)
    assert run.summary["served"] == 4 and {row["point"] for row in run.series} == {best.best.name}
    assert best.best.config.ranker is not None


def test_calibration_scales_the_ranker_stage_apart_from_the_query_stage(cross_encoder_dir):
    """Reranked batches that run 2x slower than profiled halve the reranked configurations' capacities and
    leave the query-only points' as they were (and the other way round)."""
    from elasticdenser.serve.router import Router, RouterConfig

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    prof = _two_stage_profile([OperatingPoint.parse("L4-H4-F128-D64")], ranker.default_points())
    r = Router(prof, RouterConfig(slo_ms=500, calibration_alpha=0.5))
    before = dict(r.capacity)
    joint = next(p for p in r.ladder if p.config.ranker is not None)
    query = next(p for p in r.ladder if p.config.ranker is None)
    for _ in range(20):
        r.observe_service(joint.name, 2, 2.0 * joint.service_ms(2))
    assert r.scales["rerank"] == pytest.approx(2.0, rel=0.02) and r.scale == 1.0
    assert r.capacity[query.name] == before[query.name]
    assert r.capacity[joint.name] == pytest.approx(before[joint.name] / 2, rel=0.1)
    for _ in range(20):
        r.observe_service(query.name, 1, 0.5 * query.service_ms(1))
    assert r.scale == pytest.approx(0.5, rel=0.02) and r.scales["rerank"] == pytest.approx(2.0, rel=0.02)


def test_discrete_event_ramp_over_both_stages(cross_encoder_dir):
    """The DES drives the same router over joint configurations: at low load it reranks, at the
    ramp's peak it sheds the ranker, and it stays within the SLO where a static full pipeline cannot."""
    from elasticdenser.operating_point import OperatingPoint
    from elasticdenser.serve import simulate as sim
    from elasticdenser.serve.router import Router, RouterConfig
    from elasticdenser.serve.traces import parse_trace

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    profile = _two_stage_profile([OperatingPoint.parse("L4-H4-F128-D64"), OperatingPoint.parse("L2-H2-F64-D32")],
                                 ranker.default_points())
    config = RouterConfig(slo_ms=100)
    full = sim.full_point(profile)
    assert full == f"L4-H4-F128-D64+{ranker.default_points()[0].name}@5"
    assert sim.smallest_point(profile) == "L2-H2-F64-D32"
    capacity = Router.static(profile, full, config).capacity[full]
    trace = parse_trace("ramp:lo=0.2x,hi=3x,duration=40,hold=0.2", capacity, seed=0)
    routed, static = sim.simulate_policies(trace.times, profile, ["router", "static-full"], config, duration=trace.duration)
    served = {row["point"] for row in routed.series if row["point"]}
    assert any("+" in name for name in served) and any("+" not in name for name in served)
    assert routed.summary["windows_p99_within_slo"] > static.summary["windows_p99_within_slo"]


def test_importance_order_keeps_the_full_point_and_changes_the_prefixes(cross_encoder_dir):
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    small = ranker.default_points()[-1]
    full_before, small_before = ranker.score_pairs(PAIRS), ranker.score_pairs(PAIRS, small)
    lists = [(PAIRS[1][0], [PAIRS[1][1], PAIRS[2][1], PAIRS[3][1]], 0), (PAIRS[0][0], [PAIRS[3][1], PAIRS[0][1]], 1)]
    info = ranker.reorder_by_importance(lists)
    assert info["num_lists"] == 2 and ranker.encoder.reordered
    np.testing.assert_allclose(ranker.score_pairs(PAIRS), full_before, atol=1e-5)  # a permutation
    assert not np.allclose(ranker.score_pairs(PAIRS, small), small_before, atol=1e-5)
    assert any(perm != sorted(perm) for perm in ranker.encoder.head_permutation + ranker.encoder.ffn_permutation)


def test_layer_order_keeps_the_depth_whose_list_scores_stay_closest_and_survives_save(cross_encoder_dir, tmp_path):
    from elasticdenser.operating_point import OperatingPoint

    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    lists = [(PAIRS[1][0], [PAIRS[1][1], PAIRS[2][1], PAIRS[3][1]], 0), (PAIRS[0][0], [PAIRS[3][1], PAIRS[0][1]], 1)]
    full_before = ranker.score_pairs(PAIRS)
    space = ranker.encoder.space
    L = space.num_layers

    def kl_to_full(layers):
        ranker.encoder.layer_order = list(layers) + [i for i in range(L) if i not in layers]
        kl = 0.0
        for q, ps, _ in lists:
            full = torch.log_softmax(torch.from_numpy(ranker.score(q, ps)), -1)
            sub = torch.log_softmax(torch.from_numpy(ranker.score(q, ps, OperatingPoint(
                len(layers), space.full.heads, space.full.ffn, space.hidden_size))), -1)
            kl += float(torch.nn.functional.kl_div(sub, full, log_target=True, reduction="sum"))
        return kl

    # greedy elimination's first step is exhaustive: depth L-1 keeps the best (L-1)-subset
    best = min((tuple(i for i in range(L) if i != drop) for drop in range(L)), key=kl_to_full)
    ranker.encoder.layer_order = list(range(L))
    order = ranker.reorder_layers(lists)
    assert sorted(order) == list(range(L))
    assert tuple(sorted(order[: L - 1])) == best
    np.testing.assert_allclose(ranker.score_pairs(PAIRS), full_before, atol=1e-5)  # every layer still runs
    small = OperatingPoint(2, space.full.heads, space.full.ffn, space.hidden_size)
    ranker.save_pretrained(tmp_path / "r")
    loaded = ElasticRanker.from_pretrained(tmp_path / "r")
    assert loaded.encoder.layer_order == order
    np.testing.assert_allclose(loaded.score_pairs(PAIRS, small), ranker.score_pairs(PAIRS, small), atol=1e-5)
    with pytest.raises(InvalidInputError, match="at least one candidate list"):
        ranker.reorder_layers([])


def test_default_ranker_points_keep_every_layer_and_cut_width_to_a_quarter(cross_encoder_dir):
    ranker = ElasticRanker.from_pretrained(cross_encoder_dir)
    space = ranker.encoder.space
    points = ranker.default_points()
    assert points[0] == space.full and len(points) == 4
    assert all(p.layers == space.num_layers and p.width == space.hidden_size for p in points)
    assert [p.heads for p in points] == sorted({p.heads for p in points}, reverse=True)
    assert abs(space.flops(points[-1], 32) / space.flops(points[0], 32) - 0.25) < 0.05


def test_first_stage_weight_follows_whichever_score_ranks_the_held_out_positives_first():
    from types import SimpleNamespace

    from elasticdenser.rerank import interpolate
    from elasticdenser.training.ranker_data import RankerExample
    from elasticdenser.training.ranker_weights import choose_first_stage_weights, split_dev_lists

    def lists(first_stage_right: bool):
        out = []
        for i in range(20):
            cands = [(f"q{i}-d{j}", f"q{i} passage {j}") for j in range(6)]
            scores = [6.0 - j for j in range(6)]  # the first stage ranks d0 first
            positive = cands[0] if first_stage_right else cands[5]
            out.append(RankerExample(f"q{i}", cands, [positive], scores))
        return out

    point = SimpleNamespace(name="P")
    ranker = SimpleNamespace(  # ranks every list's d5 first (a perfect ranker when d5 is the positive)
        score_pairs=lambda pairs, p: np.array([float(t.endswith(" 5")) for _, t in pairs]),
        resolve_point=lambda p: point)
    assert choose_first_stage_weights(ranker, lists(False), [point])["P"]["weight"] == 0.0
    right = choose_first_stage_weights(ranker, lists(True), [point])["P"]
    # the smallest weight at which the first stage's d0 overtakes the ranker's d5 (ties go to the ranker)
    assert right["weight"] == 0.5 and right["mrr@10"] == 1.0 and right["by_weight"][0.4] < 1.0
    np.testing.assert_array_equal(interpolate([3.0, 1.0], [0.0, 9.0], 0.0), [3.0, 1.0])
    np.testing.assert_allclose(interpolate([3.0, 1.0, 2.0], [10.0, 30.0, 20.0], 0.5),
                               interpolate([3.0, 1.0, 2.0], [1.0, 3.0, 2.0], 0.5))  # the first stage's scale is moot
    train, dev = split_dev_lists(lists(True), 100, seed=0)
    assert len(dev) == 4 and len(train) == 16 and not {id(x) for x in dev} & {id(x) for x in train}
