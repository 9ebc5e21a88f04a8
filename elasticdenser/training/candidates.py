"""Memory-bounded document candidates for distillation: the teacher's top-k from a FAISS index of
the stored embeddings, plus the batch's positives and documents drawn at random, with only those
rows read from the memory-mapped store.

Why: the exact path (:class:`~elasticdenser.training.losses.FixedDocuments`) holds the whole corpus
as one tensor and scores every query against every document -- 32 GB at DPR's 21M passages before
any per-width copy. Distillation only needs the documents that carry the teacher's probability
mass (its top-k) and a spread of easy negatives; so each micro-batch gets a small
``FixedDocuments`` over those rows, and every loss runs on it unchanged. When ``k`` covers the
whole corpus the candidate set is every document in corpus order, so the losses equal the exact
path's (the test holds this).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import truncate
from elasticdenser.training.losses import FixedDocuments

log = logging.getLogger(__name__)

__all__ = ["StoreDocuments"]


class StoreDocuments:
    """Full-width document embeddings left on disk (a memory-mapped ``(N, hidden)`` array) and a
    FAISS index over them that finds each query's top-k without scoring the corpus."""

    def __init__(self, array: np.ndarray, normalize: bool = True, index=None, *, seed: int = 0,
                 sampled_negatives: int = 0, device: Optional[torch.device] = None):
        if array.ndim != 2:
            raise InvalidInputError(f"document embeddings must be 2-D (N, hidden), got shape {array.shape}")
        self.array = array
        self.normalize = normalize
        self.sampled_negatives = int(sampled_negatives)
        self.device = device or torch.device("cpu")
        self.seed = int(seed)
        self.index = index if index is not None else self._flat_index()
        self.basis: Optional[torch.Tensor] = None

    def set_basis(self, basis: Optional[torch.Tensor]) -> None:
        """Cut the candidates' rows in ``basis`` (the query model's output basis). The full-width
        index needs no change: a basis keeps full-width inner products."""
        self.basis = basis

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.array.shape[1])

    def _flat_index(self, block_rows: int = 65536):
        """An exact inner-product index built block by block (small corpora, tests): the full-width
        rows by the width rule, so its scores are the teacher's."""
        import faiss

        index = faiss.IndexFlatIP(self.hidden)
        for lo in range(0, len(self), block_rows):
            block = np.asarray(self.array[lo:lo + block_rows], dtype=np.float32)
            index.add(np.ascontiguousarray(truncate(block, self.hidden, self.normalize)))
        return index

    @classmethod
    def from_experiment(cls, exp_dir: "str | Path", normalize: bool, **kw) -> "StoreDocuments":
        """The experiment's store, memory-mapped, and its full-width index when it has one."""
        from elasticdenser.index import encode as enc
        from elasticdenser.index import faiss_index as fi
        from elasticdenser.index import manifest as mf
        from elasticdenser.index.store import EmbeddingStore

        store = EmbeddingStore.open(Path(exp_dir) / enc.EMBEDDINGS)
        entry = mf.load(exp_dir).get("indexes", {}).get(str(store.dim))
        index = None
        if entry:  # the experiment's full-width index, searched as the Searcher searches it
            index = fi.load_index(Path(exp_dir) / entry["file"], use_gpu=False)
            fi.set_search_params(index, entry.get("search_params") or fi.default_search_params(entry.get("factory", "")))
        else:
            log.warning("%s has no full-width index: building an exact one in memory (%d x %d floats); index the "
                        "width %d for a memory-bounded run", exp_dir, len(store), store.dim, store.dim)
        return cls(store.array, normalize, index, **kw)

    def candidates(self, teacher_full: torch.Tensor, k: int, extra: Iterable[int] = (), key: int = 0) -> torch.Tensor:
        """Sorted unique row ids: each query's top-``k`` (from the index) + ``extra`` + random rows.

        The random rows are a function of ``key`` (the micro-batch), so a resumed run draws what an
        uninterrupted one would."""
        from elasticdenser.index import faiss_index as fi

        q = teacher_full.detach().float().cpu().numpy()
        _, ids = fi.search(self.index, q, min(int(k), len(self)))
        rows = [ids[ids >= 0].reshape(-1), np.fromiter((int(e) for e in extra), dtype=np.int64)]
        if self.sampled_negatives:
            rng = np.random.default_rng([self.seed, 13, int(key)])
            rows.append(rng.integers(0, len(self), size=min(self.sampled_negatives, len(self))))
        return torch.from_numpy(np.unique(np.concatenate(rows)).astype(np.int64))

    def subset(self, rows: torch.Tensor) -> FixedDocuments:
        """The candidate rows as an in-memory :class:`FixedDocuments` (rows in ``rows`` order)."""
        block = np.asarray(self.array[rows.numpy()], dtype=np.float32)
        return FixedDocuments(torch.from_numpy(block).to(self.device), normalize=self.normalize, basis=self.basis)
