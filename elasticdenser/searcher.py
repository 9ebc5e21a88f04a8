"""``Searcher``: an experiment directory opened for retrieval at any operating point.

Thread-safe: encoder calls are serialised by a lock (torch modules are not re-entrant under
concurrent ``train()``/``eval()`` toggles, and the CPU is saturated by one call anyway); FAISS
searches release the GIL and run concurrently; passage lookups use ``os.pread``.

Input handling (documented behaviour):
* an empty or whitespace-only query raises ``ValueError`` (``search``), or, in ``batch_search`` /
  ``search_texts``, raises ``ValueError`` naming the offending query ids unless
  ``skip_empty=True``, which drops them (they then score 0 for every metric);
* a query longer than the encoder's ``max_length`` tokens is truncated, never an error; the
  number truncated is counted in ``searcher.truncated_queries`` and reported once per call with
  a ``UserWarning``;
* a width with no ``index-d{w}.faiss`` raises ``FileNotFoundError`` naming the file.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elasticdenser.data.types import Document, check_k, is_blank
from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.operating_point import OperatingPoint, PointLike
from elasticdenser.rerank import check_depth

__all__ = ["Hit", "SearchResult", "Searcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The passage as the document tower and the ranker see it (:attr:`Document.contents`)."""
        return Document(self.doc_id, self.title, self.text).contents


@dataclass
class SearchResult:
    query: str
    point: OperatingPoint
    hits: List[Hit] = field(default_factory=list)
    #: the ranker point that reranked the first ``rerank_depth`` hits (None: not reranked)
    ranker_point: Optional[OperatingPoint] = None
    rerank_depth: int = 0


class Searcher:
    def __init__(self, exp_dir: Path, manifest: dict, encoder, doc_ids: Sequence[str], docstore=None,
                 use_gpu: Optional[bool] = None, backend: str = "auto"):
        self.exp_dir = Path(exp_dir)
        #: the query encoder path every search runs (:mod:`elasticdenser.model.fastpath`)
        self.backend = backend
        self.manifest = manifest
        self.encoder = encoder
        self.doc_ids = doc_ids
        self.docstore = docstore
        self.use_gpu = use_gpu
        self._indexes: Dict[int, object] = {}
        self._encoder_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.truncated_queries = 0
        self.points: List[OperatingPoint] = [OperatingPoint.parse(p) for p in manifest.get("points", [])] or list(
            encoder.default_points())
        self.points = [p for p in self.points if str(p.width) in manifest.get("indexes", {})] or self.points
        self._router = None
        self._router_lock = threading.Lock()
        #: the ElasticRanker that ``rerank=N`` uses (:meth:`attach_ranker`); None = no reranking
        self.ranker = None
        self._bm25 = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, exp_dir: "str | os.PathLike", allow_mismatch: bool = False, encoder=None,
             use_gpu: Optional[bool] = None, device: Optional[str] = None, backend: str = "auto",
             ranker=None) -> "Searcher":
        """Open ``exp_dir``; the encoder is ``exp_dir/model`` unless one is given. ``ranker`` (an
        ElasticRanker or its directory) enables ``rerank=N``.

        ``backend`` is the query encoder's serving path (default ``"auto"``: the
        fastest exact one; ``"int8"`` is the opt-in quantised path, see :mod:`elasticdenser.model.fastpath`).

        A given encoder that is not the experiment's query model is refused
        (``ManifestMismatchError``) unless ``allow_mismatch=True``. Refused too (``StateError``):
        a ``doc_ids.txt`` that is not the one the merge wrote (its digest is in the manifest), and a
        passage store (``docs.jsonl`` + offsets) that is missing or of another length.
        """
        from elasticdenser.index import encode as enc
        from elasticdenser.index import manifest as mf
        from elasticdenser.index.docstore import DocStore

        exp_dir = Path(exp_dir)
        manifest = mf.load(exp_dir)
        if encoder is None:
            model_dir = exp_dir / "model"
            if not model_dir.is_dir():
                raise MissingFileError(f"{model_dir} not found: pass an encoder or rebuild the experiment")
            from elasticdenser.model.encoder import ElasticEncoder

            encoder = ElasticEncoder.from_pretrained(str(model_dir))
            if device:
                encoder = encoder.to(device)
        msg = mf.check_model(manifest, encoder, allow_mismatch=allow_mismatch)
        if msg:
            warnings.warn(msg + " (allowed by allow_mismatch)", UserWarning, stacklevel=2)
        doc_ids = enc.read_doc_ids(exp_dir)
        n = manifest.get("collection", {}).get("num_docs")
        if n is not None and n != len(doc_ids):
            raise StateError(f"{exp_dir}: doc_ids.txt has {len(doc_ids)} ids but the manifest says {n}")
        digest = manifest.get("embeddings", {}).get("doc_ids_sha256")
        if digest and doc_ids.sha256() != digest:
            raise StateError(f"{exp_dir / enc.DOC_IDS} is not the file the merge wrote (its digest differs from the "
                             "manifest's): rows would be reported under the wrong ids; re-run `elasticdenser index`")
        docstore = DocStore(exp_dir)  # MissingFileError naming the file: hits without passages are refused
        if len(docstore) != len(doc_ids):
            raise StateError(f"{exp_dir}: the passage store has {len(docstore)} passages but doc_ids.txt {len(doc_ids)}")
        return cls(exp_dir, manifest, encoder, doc_ids, docstore, use_gpu=use_gpu, backend=backend).attach_ranker(ranker)

    def attach_ranker(self, ranker) -> "Searcher":
        """Rerank with ``ranker`` (an :class:`~elasticdenser.model.ranker.ElasticRanker` or its
        directory) when a search asks for ``rerank=N``."""
        if ranker is not None and not hasattr(ranker, "score_pairs"):
            from elasticdenser.model.ranker import ElasticRanker

            ranker = ElasticRanker.from_pretrained(ranker)
        self.ranker = ranker
        return self

    def _rerank(self, texts: Sequence[str], hits: List[List[Hit]], depth: int, ranker_point) -> Tuple[list, object]:
        """Per query ``(order, scores)`` of its hits after reranking (:func:`rerank_lists`), and the ranker point."""
        from elasticdenser.rerank import rerank_lists

        if self.ranker is None:
            raise StateError("rerank needs a ranker: Searcher.open(..., ranker=DIR) or attach_ranker()")
        rp = self.ranker.resolve_point(ranker_point)
        return rerank_lists(self.ranker, texts, [[h.contents for h in hs] for hs in hits], depth, rp, self.backend,
                            first_scores=[[h.score for h in hs] for hs in hits]), rp

    @staticmethod
    def _reordered(hits: List[Hit], order: List[int], scores: List[float]) -> List[Hit]:
        return [Hit(hits[i].doc_id, sc, hits[i].title, hits[i].text) for i, sc in zip(order, scores)]

    # ------------------------------------------------------------------ helpers
    def resolve_point(self, point: PointLike) -> OperatingPoint:
        """An explicit point (``"full"`` or a name) of this searcher's model; ``None`` -> the full point."""
        return self.encoder.resolve_point(point)

    @property
    def router(self):
        """The router built from the manifest's measured profile; None if never profiled."""
        if self._router is None and isinstance(self.manifest.get("profile"), dict):
            from elasticdenser.serve.profile import check_profile_model, load_profile
            from elasticdenser.serve.router import Router

            profile = load_profile(self.manifest)
            check_profile_model(profile, self.manifest.get("model", {}).get("fingerprint", ""), self.exp_dir / "manifest.json")
            self._router = Router(profile, points=[p.name for p in self.points])
        return self._router

    def _route(self, point: PointLike, n: int) -> OperatingPoint:
        """What ``point=None`` means in every search call: the router's choice for a batch of ``n``
        when the experiment is profiled, else the full point. An explicit point always wins."""
        if point is not None or self.router is None:
            return self.resolve_point(point)
        with self._router_lock:
            return self.resolve_point(self.router.route(n))

    def index(self, width: int):
        """The FAISS index for ``width`` (loaded on first use)."""
        width = int(width)
        with self._index_lock:
            if width not in self._indexes:
                from elasticdenser.index import faiss_index as fi
                from elasticdenser.index import manifest as mf

                index = fi.load_index(self.exp_dir / fi.index_file(width), use_gpu=self.use_gpu)
                info = mf.check_index(self.manifest, width, self.encoder, fi.index_file(width))
                fi.set_search_params(index, info.get("search_params"))
                if index.ntotal != len(self.doc_ids):
                    raise StateError(f"{fi.index_file(width)} holds {index.ntotal} vectors, doc_ids.txt {len(self.doc_ids)}")
                self._indexes[width] = index
            return self._indexes[width]

    def _count_truncated(self, texts: Sequence[str]) -> int:
        limit = int(getattr(self.encoder, "max_length", 0) or 0)
        tok = getattr(self.encoder, "tokenizer", None)
        if not limit or tok is None:
            return 0
        # every token covers >= 1 character, so only texts longer than limit - 2 characters can overflow
        long = [t for t in texts if len(t) > limit - 2]
        if not long:
            return 0
        lengths = [len(ids) for ids in tok(long, add_special_tokens=True, truncation=False)["input_ids"]]
        return sum(1 for n in lengths if n > limit)

    def encode(self, texts: Sequence[str], point: "OperatingPoint | str | None" = None, batch_size: int = 32) -> np.ndarray:
        p = self.resolve_point(point)
        n_long = self._count_truncated(texts)
        if n_long:
            with self._stats_lock:
                self.truncated_queries += n_long
            warnings.warn(f"{n_long} quer{'y' if n_long == 1 else 'ies'} longer than {self.encoder.max_length} tokens "
                          "truncated", UserWarning, stacklevel=3)
        with self._encoder_lock:
            return self.encoder.encode(list(texts), point=p, batch_size=batch_size, backend=self.backend)

    def _check_texts(self, ids: Sequence[str], texts: Sequence[str], skip_empty: bool) -> List[int]:
        wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if wrong:
            raise InvalidInputError(f"queries must be strings; {ids[wrong[0]]!r} is {type(texts[wrong[0]]).__name__}")
        bad = [i for i, t in enumerate(texts) if is_blank(t)]
        if bad and not skip_empty:
            shown = ", ".join(repr(ids[i]) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise InvalidInputError(f"{len(bad)} empty or whitespace-only quer{'y' if len(bad) == 1 else 'ies'} ({shown}); "
                             "remove them or pass skip_empty=True")
        badset = set(bad)
        return [i for i in range(len(texts)) if i not in badset]

    def bm25(self):
        """The experiment's BM25 index (``index --bm25``), loaded on first use."""
        with self._index_lock:
            if self._bm25 is None:
                from elasticdenser.index.bm25 import BM25Index

                self._bm25 = BM25Index(self.exp_dir, len(self.doc_ids),
                                       self.manifest.get("embeddings", {}).get("doc_ids_sha256"))
            return self._bm25

    def _first_stage(self, texts: Sequence[str], k: int, point, batch_size: int = 32,
                     timings: Optional[List[float]] = None, first_stage: str = "dense",
                     fusion: str = "rrf") -> Tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the first stage: dense (at ``point``), BM25, or their fusion
        (:func:`elasticdenser.index.bm25.fuse`, over the top ``max(k, 100)`` of each)."""
        from elasticdenser.index.bm25 import FIRST_STAGES, fuse

        if first_stage not in FIRST_STAGES:
            raise InvalidInputError(f"first_stage must be one of {', '.join(FIRST_STAGES)}, got {first_stage!r}")
        if first_stage == "dense":
            return self._raw_search(texts, k, point, batch_size, timings)
        k = check_k(k)
        scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
        rows = np.full((len(texts), k), -1, dtype=np.int64)
        for lo in range(0, len(texts), batch_size):
            t0 = time.perf_counter()
            batch = texts[lo : lo + batch_size]
            lexical = self.bm25().search(batch, max(k, 100) if first_stage == "fusion" else k)
            if first_stage == "fusion":
                lexical = fuse(self._raw_search(batch, max(k, 100), point, batch_size), lexical, k, fusion)
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            n = lexical[1].shape[1]
            scores[lo : lo + len(batch), :n], rows[lo : lo + len(batch), :n] = lexical
        return scores, rows

    def _raw_search(self, texts: Sequence[str], k: int, point, batch_size: int = 32,
                    timings: Optional[List[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
        from elasticdenser.index import faiss_index as fi

        p = self.resolve_point(point)
        k = check_k(k)
        index = self.index(p.width)
        scores = np.empty((len(texts), k), dtype=np.float32)
        ids = np.empty((len(texts), k), dtype=np.int64)
        for lo in range(0, len(texts), batch_size):
            t0 = time.perf_counter()
            q = self.encode(texts[lo : lo + batch_size], p, batch_size=batch_size)
            s, i = fi.search(index, q, k)
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            scores[lo : lo + len(q)], ids[lo : lo + len(q)] = s, i
        return scores, ids

    def _hit(self, row: int, score: float) -> Hit:
        doc_id = self.doc_ids[row]
        if self.docstore is None:
            return Hit(doc_id, float(score), "", "")
        d = self.docstore.get(row)
        if d.doc_id != doc_id:  # one per hit, so search() and batch_search() can never disagree
            raise StateError(f"{self.exp_dir}: row {row} is {doc_id!r} in doc_ids.txt but {d.doc_id!r} in docs.jsonl; "
                             "the experiment's files do not belong together: re-run `elasticdenser index`")
        return Hit(doc_id, float(score), d.title, d.text)

    # ------------------------------------------------------------------ public API
    def search(self, query: str, k: int = 10, point: "OperatingPoint | str | None" = None, rerank: int = 0,
               ranker_point: "OperatingPoint | str | None" = None, first_stage: str = "dense",
               fusion: str = "rrf") -> SearchResult:
        """Top ``k`` hits; with ``rerank=N`` the first stage's top ``max(k, N)`` of which the first
        ``N`` are reranked by the attached ranker at ``ranker_point`` (None = its full point).
        ``first_stage``: ``dense`` (the query point), ``bm25`` or ``fusion`` (``rrf`` or ``score``)."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        if is_blank(query):
            raise InvalidInputError("empty query: give some text to search for")
        k = check_k(k)
        depth = check_depth(rerank)
        p = self._route(point, 1)
        scores, ids = self._first_stage([query], max(k, depth), p, first_stage=first_stage, fusion=fusion)
        hits = [self._hit(int(r), s) for r, s in zip(ids[0], scores[0]) if r >= 0]
        if not depth:
            return SearchResult(query, p, hits[:k])
        ((order, new_scores),), rp = self._rerank([query], [hits], depth, ranker_point)
        return SearchResult(query, p, self._reordered(hits, order, new_scores)[:k], rp, depth)

    def search_texts(self, texts: Sequence[str], k: int = 10, point=None, batch_size: int = 32,
                     skip_empty: bool = False, rerank: int = 0, ranker_point=None, first_stage: str = "dense",
                     fusion: str = "rrf") -> List[List[Hit]]:
        texts = list(texts)
        depth = check_depth(rerank)
        keep = self._check_texts([str(i) for i in range(len(texts))], texts, skip_empty)
        point = self._route(point, len(keep))
        scores, ids = self._first_stage([texts[i] for i in keep], max(check_k(k), depth), point, batch_size,
                                        first_stage=first_stage, fusion=fusion)
        out: List[List[Hit]] = [[] for _ in texts]
        for row, i in enumerate(keep):
            out[i] = [self._hit(int(r), s) for r, s in zip(ids[row], scores[row]) if r >= 0]
        if depth and keep:
            lists, _ = self._rerank([texts[i] for i in keep], [out[i] for i in keep], depth, ranker_point)
            for i, (order, new_scores) in zip(keep, lists):
                out[i] = self._reordered(out[i], order, new_scores)
        return [hs[:k] for hs in out]

    def batch_search(self, queries, k: int = 100, point=None, batch_size: int = 32, skip_empty: bool = False,
                     timings: Optional[List[float]] = None, return_rows: bool = False, rerank: int = 0,
                     ranker_point=None, first_stage: str = "dense", fusion: str = "rrf"):
        """A ``ranx.Run`` named after the point that served it (``point=None``: routed, as in
        :meth:`search`; evaluation passes a point). ``queries``: ``Query`` objects, ``{qid: text}``, or
        ``(qid, text)`` pairs. ``timings`` collects seconds per batch (encode + search).
        With ``return_rows=True`` returns ``(run, {qid: [row, ...]})`` (ranked corpus positions).
        ``rerank=N``: the first ``N`` of each list reranked as in :meth:`search`; the run is then
        named ``<point>+<ranker point>@N``; a BM25 first stage is ``bm25``, a fusion ``<point>+bm25-<fusion>``."""
        from elasticdenser.eval.metrics import make_run

        pairs = _as_pairs(queries)
        ids_, texts = [q for q, _ in pairs], [t for _, t in pairs]
        depth = check_depth(rerank)
        keep = self._check_texts(ids_, texts, skip_empty)
        p = self._route(point, len(keep))
        scores, rows = self._first_stage([texts[i] for i in keep], max(check_k(k), depth), p, batch_size, timings,
                                         first_stage, fusion)
        name = {"dense": p.name, "bm25": "bm25"}.get(first_stage, f"{p.name}+bm25-{fusion}")
        if depth and keep:
            valid = [rows[j] >= 0 for j in range(len(keep))]
            lists, rp = self._rerank([texts[i] for i in keep],
                                     [[self._hit(int(r), float(sc)) for r, sc in zip(rows[j][v], scores[j][v])]
                                      for j, v in enumerate(valid)], depth, ranker_point)
            for j, (order, new_scores) in enumerate(lists):
                n = len(order)
                rows[j, :n], scores[j, :n] = rows[j][valid[j]][order], new_scores
            name = f"{name}+{rp.name}@{depth}"
        results, ranked = {}, {}
        for j, i in enumerate(keep):
            valid_j = rows[j] >= 0
            r, s = rows[j][valid_j][: check_k(k)], scores[j][valid_j][: check_k(k)]
            # ranx sorts by score; identical scores are ordered by doc id there
            results[ids_[i]] = {self.doc_ids[int(x)]: float(y) for x, y in zip(r, s)}
            ranked[ids_[i]] = [int(x) for x in r]
        run = make_run(results, name=name) if results else None
        return (run, ranked) if return_rows else run

    def passage(self, row: int):
        if self.docstore is None:
            raise MissingFileError(f"{self.exp_dir} has no passage text store (docs.jsonl)")
        return self.docstore.get(row)


def _as_pairs(queries) -> List[Tuple[str, str]]:
    if isinstance(queries, dict):
        return [(str(k), v) for k, v in queries.items()]
    out = []
    for q in queries:
        if hasattr(q, "query_id"):
            out.append((str(q.query_id), q.text))
        else:
            qid, text = q
            out.append((str(qid), text))
    seen = set()
    for qid, _ in out:
        if qid in seen:
            raise InvalidInputError(f"duplicate query id {qid!r}")
        seen.add(qid)
    return out
