"""Training data: the corpus the document tower encodes, the training questions (query pool +
the collection's labelled train split) behind the leakage guard, and the seeded example stream.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from elasticdenser.errors import InvalidInputError
from elasticdenser.training.config import TrainConfig

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

    doc_texts: List[str]
    doc_ids: List[str]
    examples: List[Example]
    val_texts: List[str] = field(default_factory=list)
    collection_name: str = ""
    pool_size: int = 0
    labelled: int = 0

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
        cache = self.__dict__.setdefault("_perm_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(len(self.examples))
        return cache[epoch]


def load_training_data(config: TrainConfig, collection=None, pool=None) -> TrainingData:
    """Corpus + training questions through the data layer, with the leakage guard.

    ``collection`` / ``pool`` may be given directly (a :class:`~elasticdenser.data.Collection` and a
    list of :class:`~elasticdenser.data.Query`); the leakage guard runs on them all the same.
    """
    import elasticdenser.data as data
    from elasticdenser.data.leakage import check_leakage

    if collection is None:
        collection = data.load_collection(config.collection, data_dir=config.data_dir)
    protected = []
    for name in config.exclude:
        if name == collection.name or name == config.collection:
            protected.append(collection)
        else:
            protected.append(data.load_collection(name, data_dir=config.data_dir))

    if pool is None and config.query_pool:
        pool = data.load_query_pool(
            config.query_pool, data_dir=config.data_dir, exclude=list(config.exclude), drop_overlap=config.drop_overlap
        )
    pool = list(pool or [])
    if protected:
        # load_query_pool already guards; an explicitly passed pool must pass the same check
        pool, dropped = check_leakage(
            pool, protected, drop_overlap=config.drop_overlap, pool_name=f"query pool {config.query_pool or '<given>'}"
        )
        if dropped:
            log.warning("dropped %d pool question(s) that are evaluation questions", len(dropped))

    docs = list(collection.corpus)
    if config.max_documents:
        docs = docs[: int(config.max_documents)]
    doc_ids = [d.doc_id for d in docs]
    position = {d: i for i, d in enumerate(doc_ids)}

    # validation: a seeded slice of the pool (labels come from the teacher later)
    rng = np.random.default_rng([config.seed, 7])
    order = rng.permutation(len(pool))
    n_val = min(int(config.val_size), max(0, len(pool) // 5)) if config.eval_every > 0 else 0
    val = [pool[i] for i in order[:n_val]]
    train_pool = [pool[i] for i in sorted(order[n_val:])]
    if config.max_train_queries:
        train_pool = train_pool[: int(config.max_train_queries)]
    examples = [Example(q.text) for q in train_pool]

    labelled = 0
    if config.use_collection_train and collection.train_queries:
        train_q = list(collection.train_queries)
        if protected:
            check_leakage(train_q, protected, pool_name=f"{collection.name} train split")
        for q in train_q:
            pos = tuple(position[d] for d in collection.train_positives.get(q.query_id, []) if d in position)
            if pos:
                labelled += 1
            examples.append(Example(q.text, pos))
    if not examples:
        raise InvalidInputError(
            f"no training questions: query pool {config.query_pool!r} is empty and {collection.name} has no train split"
        )
    return TrainingData(
        doc_texts=[d.contents for d in docs],
        doc_ids=doc_ids,
        examples=examples,
        val_texts=[q.text for q in val],
        collection_name=collection.name,
        pool_size=len(train_pool),
        labelled=labelled,
    )
