"""The output basis: widths cut in the principal directions of the corpus (issue 14).

A basis must leave full-width scores alone, keep more of each vector at a small width than plain
truncation, travel with the model (saved, loaded, checked), be honoured by every query path
(sliced, materialised, fast path) and by every index built for the model, and be refused where an
index was cut in another one.
"""
from __future__ import annotations

import copy
import gzip
import json

import numpy as np
import pytest
import torch

from elasticdenser.errors import StateError
from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.operating_point import principal_basis, truncate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts(data_dir):
    with gzip.open(data_dir / "nq-gold-passages" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(120), fh)]
    return [r["question"] for r in rows], [r["ctxs"][0]["title"] + " " + r["ctxs"][0]["text"] for r in rows]


@pytest.fixture(scope="module")
def minilm_docs(minilm_path, texts):
    return ElasticEncoder.from_pretrained(minilm_path).encode(texts[1], None, batch_size=32)


def test_principal_basis_is_orthogonal_deterministic_and_keeps_more_than_a_plain_cut(minilm_docs):
    basis = principal_basis(minilm_docs)
    assert basis.shape == (384, 384) and basis.dtype == np.float32
    np.testing.assert_allclose(basis.T @ basis, np.eye(384), atol=1e-4)
    np.testing.assert_array_equal(basis, principal_basis(minilm_docs.copy()))
    # full width: every inner product is the one without a basis
    q = minilm_docs[:10]
    np.testing.assert_allclose(truncate(q, 384, True, basis) @ truncate(minilm_docs, 384, True, basis).T,
                               q @ minilm_docs.T, atol=1e-5)
    # at a small width the leading directions hold more of each document than its first dimensions
    for w in (32, 96):
        kept = np.linalg.norm(minilm_docs @ basis[:, :w], axis=1).mean()
        plain = np.linalg.norm(minilm_docs[:, :w], axis=1).mean()
        assert kept > plain + 0.05, (w, kept, plain)
    # numpy and torch cut alike (the index side and the query side)
    t = truncate(torch.from_numpy(minilm_docs), 96, True, torch.from_numpy(basis)).numpy()
    np.testing.assert_allclose(t, truncate(minilm_docs, 96, True, basis), atol=1e-5)
    with pytest.raises(Exception, match="non-empty"):
        principal_basis(np.zeros((0, 4), dtype=np.float32))


def _random_basis(h: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((h, h)))
    return q.astype(np.float32)


def test_every_query_path_and_the_checkpoint_keep_the_basis(tiny_bert_dir, tmp_path, texts, every_backend_matches):
    plain = ElasticEncoder.from_pretrained(tiny_bert_dir)
    enc = copy.deepcopy(plain)
    enc.set_output_basis(_random_basis(plain.space.hidden_size))
    assert enc.fingerprint() != plain.fingerprint()
    questions = texts[0][:6]
    small = enc.default_points()[-1]
    raw = plain.encode(questions, plain.space.full)  # unit-length pooled vectors, no basis
    b = enc.output_basis.numpy()
    # sliced (training's path), materialised (serving's) and the default encode all cut in the basis
    batch = enc.tokenize(questions)
    with torch.no_grad():
        sliced = enc(batch["input_ids"], batch["attention_mask"], small, batch["token_type_ids"]).numpy()
        mat = enc.materialize(small)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    assert not np.allclose(truncate(raw, small.width), truncate(raw, small.width, True, b), atol=1e-3)
    # the reference, written out: the small point's pooled vector times the first columns of the basis, re-normalised
    with torch.no_grad():
        pooled = plain.pooled(batch["input_ids"], batch["attention_mask"], small, batch["token_type_ids"]).numpy()
    ref = pooled @ b[:, :small.width]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(sliced, ref, atol=1e-5)
    full = enc.encode(questions, enc.space.full)
    np.testing.assert_allclose(full @ full.T, raw @ raw.T, atol=1e-5)
    small_plain = plain.encode(questions, small)
    assert not np.allclose(sliced, small_plain, atol=1e-3)
    np.testing.assert_allclose(sliced, mat, atol=1e-5)
    np.testing.assert_allclose(enc.encode(questions, small), sliced, atol=1e-5)
    # the exported graphs carry the basis too
    every_backend_matches(lambda backend: enc.encode(questions, small, backend=backend), sliced)

    enc.save_pretrained(tmp_path / "m")
    back = ElasticEncoder.from_pretrained(tmp_path / "m")
    assert back.output_basis_sha == enc.output_basis_sha and back.fingerprint() == enc.fingerprint()
    np.testing.assert_allclose(back.encode(questions, small), sliced, atol=1e-5)
    # a damaged or swapped basis file is an error naming it, never a silently different model
    np.save(tmp_path / "m" / "output_basis.npy", _random_basis(plain.space.hidden_size, seed=1))
    with pytest.raises(StateError, match="output_basis.npy"):
        ElasticEncoder.from_pretrained(tmp_path / "m")
    with pytest.raises(Exception, match="orthogonal"):
        enc.set_output_basis(np.ones((plain.space.hidden_size,) * 2, dtype=np.float32))
