"""The lexical first stage: BM25 (``bm25s``) over an experiment's own passages, saved beside its
FAISS indexes, and the fusion of BM25 with a dense run.

The BM25 index reads the passages exactly as the document tower encoded them
(:attr:`~elasticdenser.data.types.Document.contents`, from ``docs.jsonl``), so its row ``i`` is the
dense indexes' row ``i`` and both report the same ids. It lives in ``EXP/bm25/`` (written under a
temporary name, then renamed) and the manifest's ``bm25`` section records how it was tokenised.

Fusion follows Pyserini's hybrid search: reciprocal-rank fusion (``rrf``, ``1 / (k + rank)``
summed over the two lists, k = 60) or normalised-score fusion (``score``: each list's scores
min-max normalised to [0, 1], then ``alpha * dense + (1 - alpha) * bm25``; a document missing from
one list scores 0 there).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from elasticdenser.atomic import atomic_dir
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["BM25_DIR", "FUSIONS", "FIRST_STAGES", "build_bm25", "BM25Index", "fuse"]

BM25_DIR = "bm25"
FUSIONS = ("rrf", "score")
FIRST_STAGES = ("dense", "bm25", "fusion")
_SETTINGS = {"stopwords": "en", "k1": 1.5, "b": 0.75, "method": "lucene"}


def _tokenize(texts: Sequence[str], stopwords: str):
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=stopwords, show_progress=False)


def build_bm25(exp_dir: "str | os.PathLike", progress: bool = False) -> Dict[str, object]:
    """Index ``EXP/docs.jsonl`` with BM25 into ``EXP/bm25/``; returns the manifest section."""
    import bm25s

    from elasticdenser.index import manifest as mf
    from elasticdenser.index.docstore import DocStore

    exp_dir = Path(exp_dir)
    digest = mf.load(exp_dir).get("embeddings", {}).get("doc_ids_sha256")
    store = DocStore(exp_dir)
    rows = range(len(store))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="bm25 passages", unit="doc")
    texts = [store.get(i).contents for i in rows]
    if not texts:
        raise InvalidInputError(f"{exp_dir}: no passages to index with BM25")
    retriever = bm25s.BM25(k1=_SETTINGS["k1"], b=_SETTINGS["b"], method=_SETTINGS["method"])
    retriever.index(_tokenize(texts, _SETTINGS["stopwords"]), show_progress=progress)
    with atomic_dir(exp_dir / BM25_DIR) as tmp:
        retriever.save(str(tmp), show_progress=False)
        (tmp / "settings.json").write_text(json.dumps({**_SETTINGS, "num_docs": len(texts), "doc_ids_sha256": digest}))
    return {"dir": BM25_DIR, "num_docs": len(texts), "doc_ids_sha256": digest, **_SETTINGS}


class BM25Index:
    """The saved BM25 index of an experiment: ``search(texts, k) -> (scores, rows)`` like FAISS."""

    def __init__(self, exp_dir: "str | os.PathLike", num_docs: int, doc_ids_sha256: "str | None" = None):
        import bm25s

        path = Path(exp_dir) / BM25_DIR
        settings = path / "settings.json"
        if not settings.is_file():
            raise MissingFileError(f"{path} not found: build it with `elasticdenser index ... --bm25`")
        self.settings = json.loads(settings.read_text())
        stale = int(self.settings["num_docs"]) != int(num_docs) or (
            doc_ids_sha256 and self.settings.get("doc_ids_sha256") not in (None, doc_ids_sha256))
        if stale:
            raise InvalidInputError(f"{path} indexes other passages than the experiment ({self.settings['num_docs']} vs "
                                    f"{num_docs}, or other ids): rebuild it with `elasticdenser index ... --merge --bm25`")
        self.retriever = bm25s.BM25.load(str(path), mmap=False, show_progress=False)
        self.num_docs = int(num_docs)

    def search(self, texts: Sequence[str], k: int) -> Tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.num_docs)
        rows, scores = self.retriever.retrieve(_tokenize(texts, self.settings["stopwords"]), k=k, show_progress=False,
                                               n_threads=1)
        return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)


def fuse(dense: Tuple[np.ndarray, np.ndarray], lexical: Tuple[np.ndarray, np.ndarray], k: int, method: str = "rrf",
         alpha: float = 0.5, rrf_k: int = 60) -> Tuple[np.ndarray, np.ndarray]:
    """Fuse two ``(scores, rows)`` result arrays (one row per query) into the top ``k``."""
    if method not in FUSIONS:
        raise InvalidInputError(f"fusion must be one of {', '.join(FUSIONS)}, got {method!r}")
    n = dense[1].shape[0]
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        fused: Dict[int, float] = {}
        for (s, r), weight in (((dense[0][q], dense[1][q]), alpha), ((lexical[0][q], lexical[1][q]), 1.0 - alpha)):
            valid = r >= 0
            s, r = s[valid], r[valid]
            if method == "rrf":
                add = 1.0 / (rrf_k + np.arange(1, len(r) + 1))
            else:
                span = float(s.max() - s.min()) if len(s) else 0.0
                add = weight * ((s - s.min()) / span if span > 0 else np.ones(len(s)))
            for row, value in zip(r.tolist(), add.tolist()):
                fused[row] = fused.get(row, 0.0) + float(value)
        best: List[Tuple[int, float]] = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        rows[q, : len(best)] = [b[0] for b in best]
        scores[q, : len(best)] = [b[1] for b in best]
    return scores, rows
