"""ElasticRanker mechanics on tiny random-weight cross-encoders built in the test (HF layouts)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from elasticdenser.errors import InvalidInputError
from elasticdenser.model.loading import UnsupportedModelError
from elasticdenser.model.ranker import ElasticRanker

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
    used = ranker.encoder.layers_of(small.layers)[0]
    unused = sorted(set(range(4)) - set(ranker.encoder.layers_of(small.layers)))[0]
    assert grads[f"bert.encoder.layer.{used}.intermediate.dense.weight"][: small.ffn].abs().sum() > 0
    g = grads[f"bert.encoder.layer.{unused}.intermediate.dense.weight"]
    assert g is None or g.abs().sum() == 0
