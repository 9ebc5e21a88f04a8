"""The built-in unlabeled question pool (DPR's NQ dev + TriviaQA dev) for distillation, kept
disjoint from NQ test always and from the evaluation collections you name (the leakage guard).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from elasticdenser.data.formats import data_file, load_qa_pairs
from elasticdenser.data.leakage import check_leakage, normalize_question
from elasticdenser.data.samples import DPR_NQ_DEV_TOPICS, DPR_TQA_DEV_TOPICS, nq_test_questions
from elasticdenser.data.types import Query

__all__ = ["QueryPool", "QUERY_POOL_SOURCES", "build_query_pool"]


class QueryPool(list):
    """A ``list[Query]`` that also reports what building it removed, so nothing vanishes silently.

    ``dropped``: (query, collection) pairs removed as evaluation questions (``drop_overlap``);
    ``skipped``: counts by reason (e.g. duplicate questions within the pool).
    """

    def __init__(self, queries: Iterable[Query] = (), dropped: Sequence[Tuple[Query, str]] = (),
                 skipped: Optional[Dict[str, int]] = None):
        super().__init__(queries)
        self.dropped: List[Tuple[Query, str]] = list(dropped)
        self.skipped: Dict[str, int] = dict(skipped or {})


#: Pool sources: DPR's NQ dev (drawn from NQ *train*) and TriviaQA dev. NQ test is never a source.
QUERY_POOL_SOURCES = {"nq-dev": DPR_NQ_DEV_TOPICS, "tqa-dev": DPR_TQA_DEV_TOPICS}


NQ_TEST_OWNER = "NQ test (NQ-open dev)"


@functools.lru_cache(maxsize=4)
def _pool_candidates(data_dir: Path, stamp: tuple) -> Tuple[Tuple[Query, ...], int, Tuple[str, ...]]:
    """Parsed pool sources (deduplicated) and the normalised NQ test questions.

    Cached per data directory and file stamp (path, mtime, size): several collections and the
    trainer ask for the pool in one process, and parsing 17,594 QA lines is the slow part.
    Queries are frozen dataclasses, so sharing them is safe.
    """
    seen: set = set()
    queries: List[Query] = []
    duplicates = 0
    for prefix, relative in QUERY_POOL_SOURCES.items():
        for q in load_qa_pairs(data_file(data_dir, relative), id_prefix=f"{prefix}-"):
            key = normalize_question(q.text)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            queries.append(q)
    nq_keys = tuple(dict.fromkeys(normalize_question(t) for t in nq_test_questions(data_dir)))
    return tuple(queries), duplicates, nq_keys


def build_query_pool(data_dir: Path, protected: Dict[str, str], *, drop_overlap: bool = False) -> QueryPool:
    """Unlabeled training questions for distillation: DPR NQ dev + TriviaQA dev (17,594 lines).

    Query ids are ``nq-dev-<line>`` / ``tqa-dev-<line>``; answers are kept (handy for checks,
    ignored by distillation). Repeated questions (same normalised text) are kept once and
    counted in ``skipped``.

    Two steps, deliberately different:

    1. NQ test questions are *always* removed: keeping NQ test out of training is part of what
       this pool is. DPR's NQ dev (from NQ train) repeats 2 NQ test questions up to
       tokenisation (``it 's`` / ``it's``), so the removal is not hypothetical; the removed
       questions are listed in ``dropped``, counted in ``skipped`` and logged.
    2. Overlap with ``protected`` (the evaluation questions of the collections you evaluate on)
       raises ``LeakageError`` unless ``drop_overlap`` (then also listed in ``dropped``).
    """
    files = [data_file(data_dir, relative) for relative in QUERY_POOL_SOURCES.values()]
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    queries, duplicates, nq_keys = _pool_candidates(data_dir, stamp)
    queries = list(queries)
    nq_test = dict.fromkeys(nq_keys, NQ_TEST_OWNER)
    queries, nq_dropped = check_leakage(queries, nq_test, drop_overlap=True, pool_name="query-pool (NQ test rule)")
    kept, dropped = check_leakage(queries, protected, drop_overlap=drop_overlap, pool_name="query-pool")
    skipped = {}
    if duplicates:
        skipped["repeated questions (same normalised text) kept once"] = duplicates
    if nq_dropped:
        skipped["NQ test questions removed (always)"] = len(nq_dropped)
    if dropped:
        skipped["evaluation questions of excluded collections removed (drop_overlap)"] = len(dropped)
    return QueryPool(kept, nq_dropped + dropped, skipped)
