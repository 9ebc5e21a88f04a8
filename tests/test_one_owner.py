"""One owner per shared fact (issue 13): every rule that used to be written twice, and disagreed.

Each test pins the behaviour of the one owner where the copies drifted apart: the width rule for a
model that does not normalise, answer matching, parameter counts, schema versions, the meaning of
``point=None`` in the Searcher, the query path as an argument, and the document tower recorded
after a joint stage.
"""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from elasticdenser.errors import ElasticDenserError
from elasticdenser.index import build
from elasticdenser.index import manifest as mf
from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.model.loading import UnsupportedModelError
from elasticdenser.operating_point import truncate
from elasticdenser.searcher import Searcher
from elasticdenser.serve.measure import measure_profile
from elasticdenser.serve.profile import PointProfile, Profile, load_profile, save_profile
from elasticdenser.training.losses import FixedDocuments


@pytest.fixture(scope="module")
def corpus(small_nq):
    return small_nq(n_docs=80, n_queries=10)


@pytest.fixture(scope="module")
def built(build_tiny_experiment, corpus):
    return build_tiny_experiment(corpus, chunk_size=64)


@pytest.fixture()
def exp(built, tmp_path):
    """A private copy of the tiny experiment (tests change its manifest)."""
    return shutil.copytree(built, tmp_path / "exp")


@pytest.fixture(scope="module")
def dot_encoder(tiny_bert_dir):
    """The tiny model as a dot-product model: no re-normalisation of truncated vectors."""
    return ElasticEncoder.from_pretrained(str(tiny_bert_dir), normalize=False)


@pytest.fixture(scope="module")
def dot_exp(tmp_path_factory, dot_encoder, corpus):
    out = tmp_path_factory.mktemp("dot-exp")
    build.build_experiment(dot_encoder, corpus.corpus, out, collection=corpus.name, chunk_size=64, progress=False)
    return out


def test_width_rule_is_one_function_for_tensors_and_arrays():
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    t = torch.from_numpy(x)
    for normalize in (True, False):
        np.testing.assert_allclose(truncate(x, 8, normalize), truncate(t, 8, normalize).numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(truncate(x, 8), axis=1), 1.0)
    np.testing.assert_array_equal(truncate(x, 8, normalize=False), x[:, :8])
    with pytest.raises(ElasticDenserError, match="out of range"):
        truncate(x, 17)


def test_dot_product_model_end_to_end(dot_exp, dot_encoder, corpus):
    """A model without normalisation: training's targets, the index and the search score are all dot
    products of the first ``w`` dimensions (the index used to re-normalise regardless)."""
    emb = np.load(dot_exp / "embeddings.npy")
    searcher = Searcher.open(dot_exp, encoder=dot_encoder, backend="eager")
    docs = FixedDocuments(torch.from_numpy(emb), normalize=dot_encoder.normalize)
    for point in searcher.points:
        w = point.width
        index = searcher.index(w)
        stored = index.reconstruct_n(0, index.ntotal)
        np.testing.assert_allclose(stored, emb[:, :w], rtol=1e-5, atol=1e-5)  # not re-normalised
        np.testing.assert_allclose(docs.at(w).numpy(), stored, rtol=1e-5, atol=1e-5)  # training sees the same
        q = corpus.queries[0].text
        hit = searcher.search(q, k=1, point=point).hits[0]
        qv = dot_encoder.encode([q], point=point)[0]
        row = list(searcher.doc_ids).index(hit.doc_id)
        assert hit.score == pytest.approx(float(qv @ emb[row, :w]), rel=1e-4, abs=1e-4)
        assert abs(float(np.linalg.norm(qv)) - 1.0) > 1e-3  # a real dot-product case, not unit vectors


class _Searcher:
    """The part of a Searcher that profiling uses, over fixed hits."""

    def __init__(self, encoder, hits):
        self.encoder, self.hits, self.backend = encoder, hits, "eager"
        self.points = encoder.default_points()[:2]

    def search_texts(self, texts, k, point):
        return [self.hits[t][:k] for t in texts]


def test_profile_matches_answers_by_the_evaluation_rule(tiny_encoder):
    """The answer is only in the title: DPR's rule (eval/) matches passage text, so neither counts it.
    The profile used to match title + text and reported a different accuracy than `evaluate`."""
    from elasticdenser.eval.answers import has_answer

    hits = {"capital of france": [NS(doc_id="d1", title="Paris", text="The city on the Seine.")],
            "who wrote hamlet": [NS(doc_id="d2", title="Hamlet", text="A play by William Shakespeare.")]}
    queries = [NS(query_id="q1", text="capital of france", answers=["Paris"]),
               NS(query_id="q2", text="who wrote hamlet", answers=["Shakespeare"])]
    prof = measure_profile(_Searcher(tiny_encoder, hits), queries, None, k=1, batch_sizes=[1], repeats=1)
    expected = np.mean([any(has_answer(q.answers, h.text) for h in hits[q.text]) for q in queries])
    for p in prof.points.values():
        assert p.quality["accuracy@1"] == expected == 0.5


def test_one_parameter_count(tiny_encoder, corpus, exp):
    from elasticdenser.eval.evaluate import evaluate_points

    hits = {q.text: [NS(doc_id="x", title="", text="")] for q in corpus.queries}
    prof = measure_profile(_Searcher(tiny_encoder, hits), corpus.queries, corpus.qrels, k=1, batch_sizes=[1],
                           repeats=1)
    searcher = Searcher.open(exp, encoder=tiny_encoder, backend="eager")
    rows, _ = evaluate_points(searcher, corpus, searcher.points[:2], k=10)
    embeddings = sum(p.numel() for p in tiny_encoder.model.embeddings.parameters())
    for row, point in zip(rows, searcher.points[:2]):
        count = tiny_encoder.point_params(point)
        assert count == tiny_encoder.space.params(point, embeddings)
        assert prof.points[point.name].params == count  # the profile counted layers only, without biases
        assert row["params_m"] == round(count / 1e6, 2)
    full = tiny_encoder.space.full
    # the full point reads every weight of the model (the pooler is not loaded)
    assert tiny_encoder.point_params(full) == sum(p.numel() for p in tiny_encoder.model.parameters())


def test_schema_versions_are_checked_on_load(tiny_encoder, tmp_path, exp):
    saved = tiny_encoder.save_pretrained(tmp_path / "model")
    cfg = json.loads((saved / "elastic_config.json").read_text())
    cfg["elastic_config_version"] = 99
    (saved / "elastic_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="elastic_config_version 99"):
        ElasticEncoder.from_pretrained(saved)
    with pytest.raises(UnsupportedModelError, match="elastic_config_version"):
        tiny_encoder.load_elastic_state(cfg, "a checkpoint")  # the training-restore path reads it the same way

    prof = Profile({"L4-H4-F128-D64": PointProfile("L4-H4-F128-D64", {1: {"median": 1.0, "p90": 1.0}},
                                                     {"recall@10": 0.5})}, metric="recall@10")
    save_profile(exp, prof)
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["indexes"] and load_profile(exp).metric == "recall@10"  # the rest of the manifest is kept
    manifest["profile"]["version"] = 7
    (exp / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ElasticDenserError, match="profile version 7"):
        load_profile(exp)
    manifest["format"] = 5
    (exp / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ElasticDenserError, match="manifest format 5"):
        mf.load(exp)


def test_an_interrupted_document_cache_write_leaves_nothing(tiny_encoder, tmp_path, monkeypatch):
    """The training document cache is written like every other file (elasticdenser.atomic): killed
    mid-write, it leaves neither the final name nor a stray temporary file (its own scheme used to
    leave ``docs-*.tmp<pid>.npy`` behind)."""
    from elasticdenser.training import documents
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.distributed import Dist

    def dying_save(fh, array):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(documents.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        documents.encode_documents(tiny_encoder, ["a passage", "another"], TrainConfig(progress=False), tmp_path,
                                   "key", Dist())
    assert list(tmp_path.iterdir()) == []


def test_point_none_means_routed_in_every_search_call(tiny_encoder, corpus, exp):
    """On a profiled experiment ``point=None`` is the router's choice in search, search_texts and
    batch_search alike (batch_search used to serve the full point)."""
    points = tiny_encoder.default_points()
    # the full point is far over any SLO, so the router must pick a smaller one even at low load
    table = {p.name: PointProfile(p.name, {b: {"median": 5000.0 if p == points[0] else 1.0 + i,
                                               "p90": 5000.0 if p == points[0] else 1.0 + i} for b in (1, 2, 4, 8, 16, 32)},
                                  {"recall@10": 0.9 - 0.1 * i}) for i, p in enumerate(points)}
    save_profile(exp, Profile(table, metric="recall@10", batch_sizes=[1, 2, 4, 8, 16, 32]))
    searcher = Searcher.open(exp, encoder=tiny_encoder, backend="eager")
    routed = searcher.search(corpus.queries[0].text, k=3).point
    assert routed != points[0]
    run = searcher.batch_search(corpus.queries[:4], k=3)
    assert run.name == routed.name
    assert searcher.batch_search(corpus.queries[:4], k=3, point="full").name == points[0].name


def test_query_path_is_an_argument(tiny_encoder, corpus, tmp_path, exp, monkeypatch):
    seen = []
    real = ElasticEncoder.encode
    monkeypatch.setattr(ElasticEncoder, "encode", lambda self, *a, **k: seen.append(k.get("backend")) or real(self, *a, **k))
    Searcher.open(exp, encoder=tiny_encoder, backend="jit").search("who wrote hamlet", k=2)
    Searcher.open(exp, encoder=tiny_encoder, backend="eager").search("who wrote hamlet", k=2)
    assert seen == ["jit", "eager"]
    seen.clear()  # corpus encoding takes it as an argument too (`elasticdenser index` passes "auto")
    build.encode_stage(tiny_encoder, corpus.corpus, tmp_path / "exp2", collection=corpus.name, chunk_size=64,
                       progress=False, backend="jit")
    assert seen and set(seen) == {"jit"}
    assert not hasattr(tiny_encoder, "serve_backend")  # no encoder-wide switch that callers assign


def test_joint_stage_records_the_trained_document_tower(tiny_bert_dir, corpus, tmp_path):
    """After a joint stage the pipeline indexes with the trained document tower (it used to keep the
    start model, whose vectors the trained query tower was never aligned with)."""
    from elasticdenser.data.types import Collection
    from elasticdenser.training.stage import pipeline_train_stage

    train, test = corpus.queries[:6], corpus.queries[6:]  # disjoint: the leakage guard checks it
    labelled = Collection(corpus.name, corpus.corpus, test, {q.query_id: corpus.qrels[q.query_id] for q in test},
                          train_queries=list(train),
                          train_positives={q.query_id: list(corpus.qrels[q.query_id]) for q in train})
    cfg = tmp_path / "joint.yaml"
    cfg.write_text("mode: joint\njoint_steps: 2\njoint_batch_size: 4\nsteps: 2\nbatch_size: 4\nsources: []\n"
                   "exclude: []\nreorder: false\nreorder_layers: false\neval_every: 0\ncheckpoint_every: 0\n"
                   "doc_max_length: 32\nquery_max_length: 16\n")
    start = ElasticEncoder.from_pretrained(str(tiny_bert_dir))
    logs = []
    ctx = NS(args=NS(train_config=str(cfg), model=str(tiny_bert_dir), data_dir=None, quiet=True, train_steps=None),
             out=tmp_path / "run", collection=labelled, encoder=start, extra={}, log=logs.append)
    pipeline_train_stage(ctx)
    tower = ElasticEncoder.from_pretrained(tmp_path / "run" / "training" / "document_model")
    assert ctx.extra["document_encoder"].fingerprint() == tower.fingerprint() != start.fingerprint()
    # the trained model carries a copy of that tower: usable on any corpus without the run folder
    from elasticdenser.model.towers import COPY_DIR, load_towers

    model = tmp_path / "run" / "training" / "model"
    assert (model / COPY_DIR / "config.json").is_file()
    assert load_towers(str(model))[1].fingerprint() == tower.fingerprint()
