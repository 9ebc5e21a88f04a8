"""Training data: the corpus the document tower encodes, the training questions (the query sources
of :mod:`elasticdenser.training.sources` + the collection's labelled train split) behind the
leakage guard, and the seeded example stream that mixes them in their shares.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elasticdenser.errors import InvalidInputError
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.sources import QuerySource, default_sources, parse_sources, stream_shares

log = logging.getLogger(__name__)

__all__ = ["Example", "TrainingData", "load_training_data"]


@dataclass(frozen=True)
class Example:
    text: str
    #: positions (in the corpus) of positive documents; empty = unlabeled
    positives: Tuple[int, ...] = ()


@dataclass
class TrainingData:
    """Corpus texts (document tower input), training examples and the held-out validation questions."""

    #: document texts (``Document.contents``), random access; read on demand from on-disk corpora
    doc_texts: Sequence[str]
    doc_ids: List[str]
    examples: List[Example]
    val_texts: List[str] = field(default_factory=list)
    collection_name: str = ""
    pool_size: int = 0
    labelled: int = 0
    #: per-example sampling probability (None = every example equally likely: plain permutations)
    probabilities: Optional[np.ndarray] = None
    #: per source: questions kept, stream share, and what the guard dropped or the reader skipped
    sources: Dict[str, dict] = field(default_factory=dict)

    def batch_indices(self, micro_batch: int, batch_size: int, rank: int, world: int, seed: int) -> List[int]:
        """Example indices of micro-batch ``micro_batch`` for ``rank``: a pure function of its arguments.

        The global stream is the concatenation of per-epoch permutations (seeded by epoch); a
        micro-batch takes ``batch_size * world`` consecutive positions, strided over ranks.
        """
        n = len(self.examples)
        global_size = batch_size * world
        start = micro_batch * global_size
        out = []
        for j in range(rank, global_size, world):
            pos = start + j
            epoch, offset = divmod(pos, n)
            out.append(int(self._perm(epoch, seed)[offset]))
        return out

    def _perm(self, epoch: int, seed: int) -> np.ndarray:
        """Epoch ``epoch`` of the stream: a permutation, or ``len(examples)`` weighted draws when the
        sources are mixed in shares other than their sizes."""
        cache = self.__dict__.setdefault("_perm_cache", {})
        if epoch not in cache:
            cache.clear()
            rng = np.random.default_rng([seed, epoch])
            n = len(self.examples)
            cache[epoch] = rng.permutation(n) if self.probabilities is None else rng.choice(n, size=n, p=self.probabilities)
        return cache[epoch]


class _Documents(SequenceABC):
    """The first ``n`` documents of a corpus, read on demand: a corpus in an on-disk store
    (ir_datasets' docstore, 21M passages) is never copied into memory for training."""

    def __init__(self, corpus, n: int):
        self.corpus, self.n = corpus, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.corpus[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.corpus[i % self.n]


class _Texts(_Documents):
    """What the document tower encodes (``Document.contents``), read on demand."""

    def __init__(self, docs: _Documents):
        super().__init__(docs.corpus, docs.n)

    def __getitem__(self, i):
        return [d.contents for d in super().__getitem__(i)] if isinstance(i, slice) else super().__getitem__(i).contents


def _protected(config: TrainConfig, collection):
    import elasticdenser.data as data

    protected = []
    for name in config.exclude:
        if name == collection.name or name == config.collection:
            protected.append(collection)
        else:
            protected.append(data.load_collection(name, data_dir=config.data_dir))
    return protected


def _pool_available(config: TrainConfig) -> bool:
    """Whether the built-in pool's files are there (``sources: null`` then mixes it in)."""
    import elasticdenser.data as data
    from elasticdenser.data.pool import QUERY_POOL_SOURCES
    from elasticdenser.errors import MissingFileError

    try:
        root = data.resolve_data_dir(config.data_dir)
    except MissingFileError:
        return False
    return all((root / relative).is_file() for relative in QUERY_POOL_SOURCES.values())


def _read_source(source: QuerySource, config: TrainConfig, docs, protected, keys: Dict[str, str], given_pool):
    """(queries, positives by query id, record) of one source, after the leakage guard."""
    import elasticdenser.data as data
    from elasticdenser.data.leakage import check_leakage
    from elasticdenser.data.pseudo import parse_recipe, pseudo_queries
    from elasticdenser.data.queries import load_query_file

    record: dict = {"skipped": {}}
    positives: Dict[str, List[str]] = {}
    drop = config.drop_overlap
    if source.kind == "pool":
        if given_pool is not None:
            queries = list(given_pool)
        else:
            pool = data.load_query_pool(data_dir=config.data_dir, exclude=protected, drop_overlap=drop)
            queries, record["skipped"] = list(pool), dict(pool.skipped)
    elif source.kind == "pseudo":
        kind, lo, hi = parse_recipe(source.path or config.pseudo_kind, config.pseudo_min_words, config.pseudo_max_words)
        found = pseudo_queries(docs, int(config.pseudo_queries), seed=config.seed, kind=kind, min_words=lo, max_words=hi,
                               id_prefix=f"{source.name}-")
        queries, record["skipped"] = list(found), dict(found.skipped)
        drop = True  # cut from documents, not chosen by anyone: a collision is dropped and counted
    else:
        found = load_query_file(source.path, id_prefix=f"{source.name}#", via_datasets=source.kind == "hf")
        queries, positives, record["skipped"] = list(found), found.positives, dict(found.skipped)
    queries, dropped = check_leakage(queries, keys, drop_overlap=drop, pool_name=f"query source {source.name}")
    if dropped:
        record["skipped"]["evaluation questions dropped by the leakage guard"] = len(dropped)
    return queries, positives, record


def load_training_data(config: TrainConfig, collection=None, pool=None) -> TrainingData:
    """Corpus + training questions through the data layer, with the leakage guard on every source.

    ``collection`` / ``pool`` may be given directly (a :class:`~elasticdenser.data.Collection` and a
    list of :class:`~elasticdenser.data.Query`); a given pool is the ``pool`` source (and the only
    one when ``config.sources`` is null). The leakage guard runs on them all the same.
    """
    import elasticdenser.data as data
    from elasticdenser.data.leakage import check_leakage, evaluation_keys

    if collection is None:
        collection = data.load_collection(config.collection, data_dir=config.data_dir)
    protected = _protected(config, collection)
    keys = evaluation_keys(protected)

    n_docs = min(len(collection.corpus), int(config.max_documents or len(collection.corpus)))
    docs = _Documents(collection.corpus, n_docs)
    doc_ids = list(collection.corpus.doc_ids()[:n_docs])
    position: Dict[str, int] = {}

    def positions(ids) -> Tuple[int, ...]:
        """Corpus positions of the ``ids`` the corpus holds (the id table is built on first use:
        only labelled sources need it)."""
        if not position:
            position.update((d, i) for i, d in enumerate(doc_ids))
        return tuple(position[d] for d in ids if d in position)

    if config.sources is not None:
        sources = parse_sources(config.sources)
    elif pool is not None:
        sources = [QuerySource("pool")]
    else:
        sources = default_sources(_pool_available(config))
    if pool is not None and not any(s.kind == "pool" for s in sources):
        raise InvalidInputError(f"a pool was passed, but the sources {[str(s) for s in sources]} have no 'pool' to use it")
    per_source: Dict[str, List] = {}
    records: Dict[str, dict] = {}
    source_positives: Dict[str, List[str]] = {}
    for source in sources:
        queries, positives, records[source.name] = _read_source(source, config, docs, protected, keys, pool)
        per_source[source.name] = queries
        source_positives.update(positives)

    # validation: a seeded slice of the unlabeled questions (labels come from the teacher later)
    flat = [(name, q) for name, qs in per_source.items() for q in qs]
    rng = np.random.default_rng([config.seed, 7])
    order = rng.permutation(len(flat))
    n_val = min(int(config.val_size), max(0, len(flat) // 5)) if config.eval_every > 0 else 0
    val = [flat[i][1] for i in order[:n_val]]
    kept = sorted(order[n_val:])
    groups: Dict[str, List[Example]] = {name: [] for name in per_source}
    for i in kept:
        name, q = flat[i]
        if config.max_train_queries and len(groups[name]) >= int(config.max_train_queries):
            continue
        groups[name].append(Example(q.text, positions(source_positives[q.query_id]) if q.query_id in source_positives else ()))

    labelled = sum(1 for exs in groups.values() for e in exs if e.positives)
    train_name = f"{collection.name} train split"
    if config.use_collection_train and collection.train_queries:
        train_q = list(collection.train_queries)
        if protected:
            check_leakage(train_q, keys, pool_name=train_name)
        groups[train_name] = []
        for q in train_q:
            pos = positions(collection.train_positives.get(q.query_id, []))
            labelled += bool(pos)
            groups[train_name].append(Example(q.text, pos))
        records[train_name] = {"skipped": {}}
    examples = [e for exs in groups.values() for e in exs]
    if not examples:
        raise InvalidInputError(
            f"no training questions: the sources {[str(s) for s in sources]} gave none and "
            f"{collection.name} has no train split"
        )
    sizes = {name: len(exs) for name, exs in groups.items()}
    weights = {s.name: s.weight for s in sources}
    shares = stream_shares(sizes, weights, natural=[train_name])
    probabilities = None
    if any(w is not None for w in weights.values()) and len([n for n in sizes if sizes[n]]) > 1:
        probabilities = np.concatenate([np.full(sizes[n], shares.get(n, 0.0) / max(sizes[n], 1)) for n in groups])
        probabilities = probabilities / probabilities.sum()
    for name, rec in records.items():
        rec.update(questions=sizes.get(name, 0), share=round(shares.get(name, 0.0), 4))
        if rec["skipped"]:
            log.info("query source %s: %s", name, rec["skipped"])
    return TrainingData(
        doc_texts=_Texts(docs),
        doc_ids=doc_ids,
        examples=examples,
        val_texts=[q.text for q in val],
        collection_name=collection.name,
        pool_size=sum(v for k, v in sizes.items() if k != train_name),
        labelled=labelled,
        probabilities=probabilities,
        sources=records,
    )
