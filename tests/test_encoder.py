"""Correctness of the elastic encoder (not speed: see benchmarks/bench_encoder.py)."""
from __future__ import annotations

import copy
import gzip
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elasticdenser.model.encoder import ElasticEncoder, UnsupportedModelError
from elasticdenser.operating_point import InvalidOperatingPoint, OperatingPoint

TOL = 1e-5


@pytest.fixture(scope="module")
def nq_rows(data_dir):
    path = data_dir / "nq-gold-passages" / "nq-open-oracle.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(400), fh)]
    return rows


@pytest.fixture(scope="module")
def questions(nq_rows):
    return [r["question"] for r in nq_rows]


@pytest.fixture(scope="module")
def passages(nq_rows):
    return [r["ctxs"][0]["title"] + " " + r["ctxs"][0]["text"] for r in nq_rows]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return ElasticEncoder.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return ElasticEncoder.from_pretrained(tiny_bert_dir)


def _hf_mean_pooled(path, texts, max_length=256, model_cls=None):
    from transformers import AutoModel, AutoTokenizer

    model = (model_cls or AutoModel).from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return hidden, (hidden * mask).sum(1) / mask.sum(1)


def masked_reference(enc: ElasticEncoder, batch, point: OperatingPoint) -> torch.Tensor:
    """Reference sub-network: full-size matrices, heads/neurons switched off by masks, eager softmax."""
    m = enc.model
    ids, mask = batch["input_ids"], batch["attention_mask"]
    x = m.embeddings(input_ids=ids, token_type_ids=batch.get("token_type_ids"))
    H, hd = enc.space.num_heads, enc.head_dim
    B, S = ids.shape
    head_mask = (torch.arange(H) < point.heads).float()
    ffn_mask = (torch.arange(enc.space.intermediate_size) < point.ffn).float()
    neg = (1.0 - mask[:, None, None, :].float()) * -1e9
    for layer in [m.encoder.layer[i] for i in enc.layers_of(point.layers)]:
        sa = layer.attention.self
        q = sa.query(x).view(B, S, H, hd).transpose(1, 2)
        k = sa.key(x).view(B, S, H, hd).transpose(1, 2)
        v = sa.value(x).view(B, S, H, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + neg, dim=-1)
        ctx = (att @ v) * head_mask[None, :, None, None]
        ctx = ctx.transpose(1, 2).reshape(B, S, H * hd)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        u = enc.act(layer.intermediate.dense(x)) * ffn_mask
        x = layer.output.LayerNorm(layer.output.dense(u) + x)
    if enc.pooling == "cls":
        pooled = x[:, 0]
    else:
        mk = mask.unsqueeze(-1).float()
        pooled = (x * mk).sum(1) / mk.sum(1)
    out = pooled[:, : point.width]
    return F.normalize(out, dim=-1) if enc.normalize else out


def _random_points(space, n, seed):
    rng = random.Random(seed)
    pts = []
    for _ in range(n):
        pts.append(
            OperatingPoint(
                rng.randint(1, space.num_layers),
                rng.randint(1, space.num_heads),
                rng.randint(1, space.intermediate_size),
                8 * rng.randint(1, space.hidden_size // 8),
            )
        )
    return pts


# ------------------------------------------------------------------------------ full point


def test_full_point_equals_plain_transformers_minilm(minilm, minilm_path, questions, passages):
    texts = questions[:12] + passages[:6]
    _, ref = _hf_mean_pooled(minilm_path, texts)
    ref = F.normalize(ref, dim=-1).numpy()
    assert minilm.pooling == "mean" and minilm.normalize and minilm.max_length == 256
    got = minilm.encode(texts, batch_size=5)  # length-sorted batches, order restored
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= TOL
    # the default point is the full point, and forward == encode
    b = minilm.tokenize(texts[:4])
    with torch.no_grad():
        fwd = minilm(b["input_ids"], b["attention_mask"], "L6-H12-F1536-D384", b["token_type_ids"])
    assert np.abs(fwd.numpy() - ref[:4]).max() <= TOL


def test_default_points_and_space(minilm):
    names = [p.name for p in minilm.default_points()]
    assert names == ["L6-H12-F1536-D384", "L5-H10-F1280-D384", "L4-H8-F1024-D256", "L3-H6-F768-D192"]
    assert minilm.space.full.name == names[0]


def test_cls_pooling_matches_transformers(tiny_bert_dir):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, pooling="cls", normalize=False)
    texts = ["a cls pooled sentence", "and another, longer, sentence to pad the first"]
    hidden, _ = _hf_mean_pooled(tiny_bert_dir, texts)
    got = enc.encode(texts)
    assert np.abs(got - hidden[:, 0].numpy()).max() <= TOL


def test_roberta_full_point(tmp_path, minilm_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    cfg = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id, type_vocab_size=2)
    RobertaModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = ElasticEncoder.from_pretrained(tmp_path)
    texts = ["roberta style position ids", "short"]
    _, ref = _hf_mean_pooled(tmp_path, texts, model_cls=RobertaModel)
    assert np.abs(enc.encode(texts) - F.normalize(ref, dim=-1).numpy()).max() <= TOL


# ------------------------------------------------------------------------------ sliced == masked


def test_sliced_equals_masked_reference_tiny(tiny, questions):
    batch = tiny.tokenize(questions[:6])
    for point in _random_points(tiny.space, 8, seed=1) + [tiny.space.full]:
        with torch.no_grad():
            sliced = tiny(batch["input_ids"], batch["attention_mask"], point, batch["token_type_ids"])
            ref = masked_reference(tiny, batch, point)
        assert sliced.shape == (6, point.width)
        assert (sliced - ref).abs().max().item() <= TOL, point


def test_sliced_equals_masked_reference_minilm(minilm, questions):
    batch = minilm.tokenize(questions[:4])
    for point in ["L3-H6-F768-D192", "L4-H5-F333-D128"]:
        point = OperatingPoint.parse(point)
        with torch.no_grad():
            sliced = minilm(batch["input_ids"], batch["attention_mask"], point, batch["token_type_ids"])
            ref = masked_reference(minilm, batch, point)
        assert (sliced - ref).abs().max().item() <= TOL


def test_materialized_equals_sliced(tiny, minilm, questions):
    for enc in (tiny, minilm):
        batch = enc.tokenize(questions[:5])
        for point in [enc.space.full] + enc.default_points()[-1:] + _random_points(enc.space, 1, seed=3):
            mod = enc.materialize(point)
            with torch.no_grad():
                a = mod(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                b = enc(batch["input_ids"], batch["attention_mask"], point, batch["token_type_ids"])
            assert (a - b).abs().max().item() <= TOL
            if point != enc.space.full:  # physically smaller
                n_small = sum(p.numel() for p in mod.layers.parameters())
                n_full = sum(p.numel() for p in enc.model.encoder.parameters())
                assert n_small < n_full


def test_gradients_reach_shared_parameters(tiny, questions):
    enc = copy.deepcopy(tiny)
    enc.train()
    batch = enc.tokenize(questions[:4])
    point = OperatingPoint(2, 2, 32, 32)
    out = enc(batch["input_ids"], batch["attention_mask"], point, batch["token_type_ids"])
    out.sum().backward()
    hd = enc.head_dim
    l0 = enc.model.encoder.layer[0]
    assert l0.attention.self.query.weight.grad[: 2 * hd].abs().sum() > 0
    assert l0.attention.self.query.weight.grad[2 * hd :].abs().sum() == 0  # heads outside the prefix
    assert l0.intermediate.dense.weight.grad[:32].abs().sum() > 0
    assert l0.intermediate.dense.weight.grad[32:].abs().sum() == 0
    assert enc.model.encoder.layer[3].output.dense.weight.grad is None  # layers above the point
    assert enc.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_pooled_by_length_equals_one_forward_and_its_gradients(tiny, questions):
    """Training runs a batch that mixes short and long rows as two trimmed forwards: the same
    vectors and gradients as one padded forward, in the batch's order, at a fraction of the tokens."""
    from elasticdenser.model.functional import pooled_by_length

    enc = copy.deepcopy(tiny)
    texts = [questions[0], " ".join(questions * 3), questions[1], questions[2], " ".join(questions[3:] * 2), questions[3]]
    batch = enc.tokenize(texts, 128)
    point = OperatingPoint(2, 2, 32, 32)
    widths = []

    def pooled(ids, mask, types):
        widths.append((ids.shape[0], ids.shape[1]))
        return enc.pooled(ids, mask, point, types)

    grads = []
    for run in (lambda: pooled(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                lambda: pooled_by_length(pooled, batch)):
        enc.zero_grad()
        out = run()
        (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()  # order-sensitive
        grads.append((out.detach(), enc.model.encoder.layer[0].attention.self.query.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5) and torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    padded = batch["input_ids"].shape[1]
    long_, short = sorted(widths[1:])  # by rows: the 2 long rows, the 4 short ones
    assert widths[0] == (6, padded) and long_ == (2, padded)
    assert short[0] == 4 and short[1] < padded / 2  # the four short rows ran trimmed to their own length
    even = enc.tokenize(questions[:4], 128)
    widths.clear()
    pooled_by_length(pooled, even)
    assert widths == [(4, even["input_ids"].shape[1])]  # similar lengths: one forward


def test_truncate_renormalises(minilm, questions):
    b = minilm.tokenize(questions[:3])
    with torch.no_grad():
        pooled = minilm.pooled(b["input_ids"], b["attention_mask"], None, b["token_type_ids"])
    assert pooled.shape == (3, 384)
    cut = minilm.truncate(pooled, 64)
    assert cut.shape == (3, 64)
    assert torch.allclose(cut.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(cut, F.normalize(pooled[:, :64], dim=-1))


# ------------------------------------------------------------------------------ encode


def test_encode_order_empty_and_bf16(tiny, questions):
    texts = questions[:9]
    full = tiny.encode(texts, batch_size=9)
    assert np.abs(tiny.encode(texts, batch_size=2, progress=True) - full).max() <= TOL
    single = np.stack([tiny.encode([t])[0] for t in texts[:3]])
    assert np.abs(single - full[:3]).max() <= TOL
    assert tiny.encode([]).shape == (0, 64)
    assert tiny.encode([], "L1-H1-F8-D16").shape == (0, 16)
    bf = tiny.encode(texts, bf16=True)
    assert bf.dtype == np.float32 and np.abs(bf - full).max() < 5e-2


# ------------------------------------------------------------------------------ reordering


def test_reorder_is_a_permutation_minilm(minilm, questions, passages):
    enc = copy.deepcopy(minilm)
    probe = questions[300:316] + passages[300:304]
    before = enc.encode(probe)
    small_before = enc.encode(probe, "L3-H6-F768-D192")
    info = enc.reorder_by_importance(questions[:16], passages[:24], batch_size=16)
    assert info["num_queries"] == 16
    after = enc.encode(probe)
    assert np.abs(after - before).max() <= TOL
    assert enc.reordered
    for perm in enc.head_permutation:
        assert sorted(perm) == list(range(12))
    assert any(perm != list(range(12)) for perm in enc.head_permutation)
    assert any(perm != list(range(1536)) for perm in enc.ffn_permutation)
    # prefixes changed: the small point is now a different sub-network
    assert np.abs(enc.encode(probe, "L3-H6-F768-D192") - small_before).max() > 1e-3


def test_importance_loss_is_informative(tiny, questions, passages):
    for empty in (([], passages[:2]), (questions[:2], [])):
        with pytest.raises(ValueError, match="importance scoring needs at least one query and one document"):
            tiny.head_importance(*empty)
        with pytest.raises(ValueError, match="layer ordering needs at least one query and one document"):
            tiny.reorder_layers(*empty)
    heads, ffn = tiny.head_importance(questions[:8], passages[:16], batch_size=4)
    assert heads.shape == (4, 4) and ffn.shape == (4, 128)
    assert (heads > 0).all() and (ffn.sum(1) > 0).all()


def test_apply_permutation_composes(tiny, questions):
    enc = copy.deepcopy(tiny)
    before = enc.encode(questions[:4])
    rng = np.random.default_rng(0)
    for _ in range(2):
        enc.apply_permutation([rng.permutation(4).tolist() for _ in range(4)],
                              [rng.permutation(128).tolist() for _ in range(4)])
    assert np.abs(enc.encode(questions[:4]) - before).max() <= TOL
    # undo with the recorded permutations (relative to the original) -> original weights
    inv_h = [np.argsort(p).tolist() for p in enc.head_permutation]
    inv_f = [np.argsort(p).tolist() for p in enc.ffn_permutation]
    enc.apply_permutation(inv_h, inv_f)
    for a, b in zip(enc.model.parameters(), tiny.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        enc.apply_permutation([[0, 0, 1, 2]] * 4, inv_f)


def test_layer_order_selects_nested_layers(tiny, tmp_path, questions):
    enc = copy.deepcopy(tiny)
    enc.layer_order = [3, 0, 2, 1]
    assert [enc.layers_of(k) for k in (1, 2, 3, 4)] == [[3], [0, 3], [0, 2, 3], [0, 1, 2, 3]]
    batch = enc.tokenize(questions[:6])
    for point in (OperatingPoint(2, 3, 100, 48), OperatingPoint(3, 4, 128, 64), OperatingPoint(1, 2, 40, 16)):
        with torch.no_grad():
            ref = masked_reference(enc, batch, point)
            got = enc(batch["input_ids"], batch["attention_mask"], point, batch.get("token_type_ids"))
        assert (got - ref).abs().max() <= TOL
        # the serving cache follows the layer order, and the materialised copy runs the same layers
        assert np.abs(enc.encode(questions[:6], point, materialized=True) - ref.numpy()).max() <= TOL
    enc.save_pretrained(tmp_path / "m")
    back = ElasticEncoder.from_pretrained(tmp_path / "m")
    assert back.layer_order == [3, 0, 2, 1]
    assert np.array_equal(back.encode(questions[:4], "L2-H2-F64-D32"), enc.encode(questions[:4], "L2-H2-F64-D32"))
    assert back.fingerprint() == enc.fingerprint() != tiny.fingerprint()
    cfg = json.loads((tmp_path / "m" / "elastic_config.json").read_text())
    cfg["layer_order"] = [0, 0, 1, 2]
    (tmp_path / "m" / "elastic_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="layer_order"):
        ElasticEncoder.from_pretrained(tmp_path / "m")


def test_reorder_layers_keeps_the_layers_that_matter_minilm(minilm, questions, passages):
    """Greedy elimination must beat bottom-up truncation at equal depth (top-1 agreement with full)."""
    enc = copy.deepcopy(minilm)
    probe, docs = questions[200:328], passages[:256]
    doc_emb = enc.encode(docs)
    full_top = (enc.encode(probe) @ doc_emb.T).argmax(1)

    def agreement(e):
        return float(((e.encode(probe, "L3-H12-F1536-D384") @ doc_emb.T).argmax(1) == full_top).mean())

    bottom_up = agreement(enc)
    order = enc.reorder_layers(questions[:32], passages[:64], batch_size=16)
    assert sorted(order) == list(range(6)) and enc.layer_order == order
    assert np.abs(enc.encode(probe[:8]) - minilm.encode(probe[:8])).max() <= TOL  # full point untouched
    assert agreement(enc) >= bottom_up + 0.2, (order, agreement(enc), bottom_up)


# ------------------------------------------------------------------------------ save / load / fingerprint


def test_save_load_round_trip(tiny, tmp_path, questions, passages):
    enc = copy.deepcopy(tiny)
    enc.pooling = "cls"
    enc.reorder_by_importance(questions[:8], passages[:16], batch_size=8)
    enc.set_points(["L2-H2-F64-D32", "L1-H1-F16-D16"])
    enc.save_pretrained(tmp_path / "m")
    back = ElasticEncoder.from_pretrained(tmp_path / "m")
    assert back.pooling == "cls" and back.normalize and back.reordered
    assert back.head_permutation == enc.head_permutation and back.ffn_permutation == enc.ffn_permutation
    assert [p.name for p in back.default_points()] == ["L4-H4-F128-D64", "L2-H2-F64-D32", "L1-H1-F16-D16"]
    for point in back.default_points():
        assert np.array_equal(back.encode(questions[:5], point), enc.encode(questions[:5], point))
    assert back.fingerprint() == enc.fingerprint()
    assert json.loads((tmp_path / "m" / "elastic_config.json").read_text())["importance"]["num_queries"] == 8


def test_minilm_save_load_round_trip(minilm, tmp_path, questions):
    minilm.save_pretrained(tmp_path / "m")
    back = ElasticEncoder.from_pretrained(tmp_path / "m")
    assert np.array_equal(back.encode(questions[:4]), minilm.encode(questions[:4]))
    assert back.max_length == 256 and back.pooling == "mean" and back.normalize
    assert back.fingerprint() == minilm.fingerprint()


def test_fingerprint_deterministic_and_sensitive(tiny):
    enc = copy.deepcopy(tiny)
    fp = enc.fingerprint()
    assert fp == enc.fingerprint() == tiny.fingerprint() and len(fp) == 64
    with torch.no_grad():
        enc.model.encoder.layer[2].output.dense.bias[0] += 1e-3
    fp2 = enc.fingerprint()
    assert fp2 != fp
    enc.normalize = False
    assert enc.fingerprint() != fp2


# ------------------------------------------------------------------------------ export


def test_export_round_trip_pt2(minilm, tmp_path, questions):
    from elasticdenser.model.export import load_exported

    point = "L3-H6-F768-D192"
    out = minilm.export_point(point, tmp_path / "exp")
    cfg = json.loads((out / "export_config.json").read_text())
    assert cfg["point"] == point and cfg["width"] == 192 and cfg["source_fingerprint"] == minilm.fingerprint()
    texts = questions[:7] + ["x"]
    ref = minilm.encode(texts, point)
    # plain torch: no ElasticDenser code involved in running the program
    from transformers import AutoTokenizer

    program = torch.export.load(str(out / "model.pt2")).module()
    tok = AutoTokenizer.from_pretrained(out)
    b = tok(texts[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = program(b["input_ids"], b["attention_mask"], b["token_type_ids"]).numpy()
    assert np.abs(emb - minilm.encode(texts[:3], point)).max() <= TOL
    runner = load_exported(out)
    assert np.abs(runner.encode(texts, batch_size=3) - ref).max() <= TOL


def test_export_round_trip_onnx(tiny, tmp_path, questions):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from elasticdenser.model.export import load_exported

    point = "L2-H3-F70-D40"
    out = tiny.export_point(point, tmp_path / "onnx", format="onnx")
    got = load_exported(out).encode(questions[:5])
    assert np.abs(got - tiny.encode(questions[:5], point)).max() <= TOL
    with pytest.raises(ValueError):
        tiny.export_point(point, tmp_path / "x", format="tflite")


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "bad", ["L7-H12-F1536-D384", "L0-H6-F768-D192", "L3-H13-F768-D192", "L3-H6-F1537-D192",
            "L3-H6-F768-D385", "L3-H6-F768-D100", "L3-H6-F768", "small", "L3-H6-F0-D192"],
)
def test_bad_points_rejected(minilm, bad):
    b = minilm.tokenize(["q"])
    with pytest.raises(InvalidOperatingPoint):
        minilm(b["input_ids"], b["attention_mask"], bad)
    with pytest.raises(InvalidOperatingPoint):
        minilm.encode(["q"], bad)


def test_bad_points_rejected_elsewhere(tiny, tmp_path):
    with pytest.raises(InvalidOperatingPoint):
        tiny.materialize("L5-H4-F128-D64")
    with pytest.raises(InvalidOperatingPoint):
        tiny.export_point("L1-H1-F1-D72", tmp_path)
    with pytest.raises(InvalidOperatingPoint):
        tiny.set_points(["L1-H5-F1-D8"])
    with pytest.raises(InvalidOperatingPoint):
        tiny.truncate(torch.zeros(2, 64), 65)


def test_unsupported_architectures_refused(tmp_path, tiny_bert_dir):
    from transformers import BertConfig, DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        tmp_path / "d")
    with pytest.raises(UnsupportedModelError, match="distilbert"):
        ElasticEncoder.from_pretrained(tmp_path / "d")
    cfg = BertConfig.from_pretrained(tiny_bert_dir)
    cfg.position_embedding_type = "relative_key"
    (tmp_path / "r").mkdir()
    cfg.save_pretrained(tmp_path / "r")
    with pytest.raises(UnsupportedModelError, match="relative_key"):
        ElasticEncoder.from_pretrained(tmp_path / "r")
    with pytest.raises(FileNotFoundError):
        ElasticEncoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError):
        ElasticEncoder.from_pretrained(tiny_bert_dir, pooling="max")


def test_point_parse_format_and_grid(minilm):
    p = OperatingPoint.parse("L3-H6-F768-D192")
    assert (p.layers, p.heads, p.ffn, p.width) == (3, 6, 768, 192) and p.name == "L3-H6-F768-D192" == str(p)
    grid = minilm.space.grid()
    assert grid[0] == minilm.space.full and len(grid) == 4 * 4 * 4 * 3
    small = minilm.space.grid(layers=[2, 6], heads=[12], ffn=[1536], widths=[64])
    assert [q.name for q in small] == ["L6-H12-F1536-D64", "L2-H12-F1536-D64"]
    with pytest.raises(InvalidOperatingPoint):
        minilm.space.grid(layers=[7])


def test_materialized_serving_cache_follows_weights(tiny, questions):
    enc = copy.deepcopy(tiny)
    point = "L2-H2-F40-D32"
    sliced = enc.encode(questions[:4], point, materialized=False)
    assert np.abs(enc.encode(questions[:4], point, materialized=True) - sliced).max() <= TOL
    with torch.no_grad():  # an optimizer step changes weights in place -> the cached copy is rebuilt
        enc.model.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
    changed = enc.encode(questions[:4], point, materialized=False)
    assert np.abs(changed - sliced).max() > 1e-4
    assert np.abs(enc.encode(questions[:4], point, materialized=True) - changed).max() <= TOL


@pytest.mark.parametrize("types", [
    ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
     "sentence_transformers.models.Normalize"),
    ("sentence_transformers.base.modules.transformer.Transformer",
     "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
     "sentence_transformers.base.modules.normalize.Normalize"),
])
def test_sentence_transformers_layouts(tmp_path, tiny_bert_dir, types):
    """Both the v2-v5 and the v6 module names are read: losing Normalize would change every score."""
    import json
    import shutil

    d = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, d)
    (d / "1_Pooling").mkdir()
    legacy = types[0].startswith("sentence_transformers.models")
    pool = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False} if legacy else {"pooling_mode": "cls"}
    (d / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    modules = [{"idx": i, "name": str(i), "path": p, "type": t}
               for i, (p, t) in enumerate(zip(["", "1_Pooling", "2_Normalize"], types))]
    (d / "modules.json").write_text(json.dumps(modules))
    enc = ElasticEncoder.from_pretrained(d)
    assert (enc.pooling, enc.normalize) == ("cls", True)
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="Dense"):
        ElasticEncoder.from_pretrained(d)
