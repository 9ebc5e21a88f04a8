"""The full point served by the document tower (``full_point: document-tower``, issue 14).

Such a model's full point must be exactly its document tower (in the model's output basis) on
every query path, its smaller points its own trained weights; the choice travels with the model
and its fingerprint, and a record that does not name that tower is refused. (Training with it:
``test_train_run.py``.)
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from elasticdenser.errors import StateError
from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.model.towers import record_document_tower
from elasticdenser.operating_point import truncate

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["who wrote the origin of species", "when did the berlin wall fall", "what is the capital of peru"]


def _trained_like(tower: ElasticEncoder) -> ElasticEncoder:
    """``tower`` with every weight moved, as training moves the shared weights, and a basis."""
    enc = copy.deepcopy(tower)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((tower.space.hidden_size,) * 2))
    enc.set_output_basis(q.astype(np.float32))
    return enc


def _tower_in_basis(tower: ElasticEncoder, enc: ElasticEncoder, texts) -> np.ndarray:
    """The rule written out: the tower's pooled full-point vector, in ``enc``'s basis, re-normalised."""
    batch = tower.tokenize(texts)
    with torch.no_grad():
        pooled = tower.pooled(batch["input_ids"], batch["attention_mask"], None, batch["token_type_ids"]).numpy()
    return truncate(pooled, tower.space.hidden_size, True, enc.output_basis.numpy())


def test_the_tower_serves_the_full_point_on_every_path_and_travels_with_the_model(tiny_bert_dir, tmp_path,
                                                                               every_backend_matches):
    tower = ElasticEncoder.from_pretrained(tiny_bert_dir)
    enc = _trained_like(tower)
    shared_full = enc.encode(QUESTIONS, None)
    small = enc.default_points()[-1]
    trained_small = enc.encode(QUESTIONS, small)
    shared_fp = enc.fingerprint()

    enc.full_point_tower = tower.fingerprint()
    assert enc.fingerprint() != shared_fp  # the choice is part of what indexes and profiles are tied to
    enc.save_pretrained(tmp_path / "m")
    record_document_tower(tmp_path / "m", tower.fingerprint(), str(tiny_bert_dir))
    back = ElasticEncoder.from_pretrained(tmp_path / "m")
    assert back.full_tower is not None and back.fingerprint() == enc.fingerprint()

    want = _tower_in_basis(tower, back, QUESTIONS)
    assert not np.allclose(want, shared_full, atol=1e-3)  # the two full points really differ
    np.testing.assert_allclose(back.encode(QUESTIONS, None), want, atol=1e-5)
    batch = back.tokenize(QUESTIONS)
    with torch.no_grad():
        mat = back.materialize(None)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    np.testing.assert_allclose(mat, want, atol=1e-5)
    every_backend_matches(lambda backend: back.encode(QUESTIONS, None, backend=backend), want)
    # the smaller points are the trained weights', untouched by the tower
    np.testing.assert_allclose(back.encode(QUESTIONS, small), trained_small, atol=1e-5)
    np.testing.assert_allclose(back.encode(QUESTIONS, small, backend="auto"), trained_small, atol=1e-4)
    # training loads the shared weights only (and keeps the fingerprint)
    bare = ElasticEncoder.from_pretrained(tmp_path / "m", full_tower=False)
    assert bare.full_tower is None and bare.fingerprint() == enc.fingerprint()
    np.testing.assert_allclose(bare.encode(QUESTIONS, None), shared_full, atol=1e-5)

    # a record naming another tower, or none, is an error naming the file
    record_document_tower(tmp_path / "m", "0" * 64, str(tiny_bert_dir))
    with pytest.raises(StateError, match="document_tower.json"):
        ElasticEncoder.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "document_tower.json").unlink()
    with pytest.raises(StateError, match="missing"):
        ElasticEncoder.from_pretrained(tmp_path / "m")
