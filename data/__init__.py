"""Datasets: ir_datasets ids, local formats, and the named sample collections.

Entry points every later stage uses:

* :func:`load_collection` — a :class:`Collection` by name (``nq-sample``, ``squad-sample``,
  ``scifact``, ``trec-dl``), ir_datasets id (``irds:<id>`` or bare ``dpr-w100/...``,
  ``beir/...``), or local path (BEIR folder, SQuAD JSON, DPR biencoder JSON).
* :func:`load_query_pool` — unlabeled training questions, guarded against evaluation leakage.
* :func:`resolve_data_dir` — where the real data lives (argument, else ``$ELASTICDENSER_DATA``).

Heavy libraries (ir_datasets, ranx) are imported lazily, so loading a sample stays fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from elasticdenser.data.dpr import DprExample, dpr_examples_to_collection, iter_dpr_biencoder, load_dpr_biencoder
from elasticdenser.data.formats import (
    iter_jsonl,
    load_jsonl_corpus,
    load_jsonl_queries,
    load_nq_open,
    load_qa_pairs,
    load_tsv_corpus,
    load_tsv_queries,
)
from elasticdenser.data.leakage import (
    LeakageError,
    check_leakage,
    evaluation_keys,
    normalize_question,
)
from elasticdenser.data.local import load_beir_folder, load_local, load_squad
from elasticdenser.data.trec import check_qrels, load_trec_qrels, load_trec_run, load_trec_topics
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError, MissingFileError

DATA_ENV = "ELASTICDENSER_DATA"
QUERY_POOL = "query-pool"
#: collections whose evaluation questions a query pool is checked against when ``exclude`` is not given
DEFAULT_POOL_EXCLUDE = ("nq-sample",)


def resolve_data_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """The real-data directory: ``path`` if given, else ``$ELASTICDENSER_DATA``; never a guess."""
    if path is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise MissingFileError(
                f"no data directory given: pass --data-dir / data_dir=..., or set {DATA_ENV} "
                "to the folder holding nq-gold-passages/, squad-v1.1/, ... (the shared data README)"
            )
        path = env
    resolved = Path(path).expanduser()
    if not resolved.is_dir():
        raise MissingFileError(f"data directory {resolved} does not exist or is not a directory")
    return resolved


def available_collections() -> List[str]:
    """Names ``load_collection`` knows (ir_datasets ids and local paths are accepted too)."""
    from elasticdenser.data.samples import SAMPLES

    return list(SAMPLES)


def load_collection(name: str, data_dir: Optional[Union[str, Path]] = None) -> Collection:
    """A collection by sample name, ir_datasets id, or local path (see module docstring)."""
    from elasticdenser.data.samples import SAMPLES

    if name in SAMPLES:
        return SAMPLES[name].loader(resolve_data_dir(data_dir))
    if name == QUERY_POOL:
        raise InvalidInputError(f"{QUERY_POOL!r} is a training question pool, not a collection: use load_query_pool()")
    if name.startswith("irds:") or name.split("/", 1)[0] in IRDS_NAMESPACES:
        from elasticdenser.data.irds import load_irds

        return load_irds(name, data_dir if data_dir is None else Path(data_dir))
    path = Path(name).expanduser()
    if path.exists():
        return load_local(path)
    from elasticdenser.data.irds import is_irds_id, load_irds

    if is_irds_id(name):  # any other ir_datasets id, e.g. antique/test
        return load_irds(name, data_dir if data_dir is None else Path(data_dir))
    raise InvalidInputError(
        f"unknown collection {name!r}: expected one of {list(SAMPLES)}, an ir_datasets id "
        "(irds:<id>, e.g. dpr-w100/natural-questions/dev, beir/scifact/test) or an existing local path"
    )


#: ir_datasets namespaces recognised without importing ir_datasets (others are looked up)
IRDS_NAMESPACES = frozenset({"dpr-w100", "beir", "msmarco-passage"})


def load_query_pool(
    name: str = QUERY_POOL,
    data_dir: Optional[Union[str, Path]] = None,
    exclude: Optional[Sequence[Union[str, Collection]]] = None,
    *,
    drop_overlap: bool = False,
) -> List[Query]:
    """Unlabeled training questions (DPR NQ dev + TriviaQA dev) for distillation.

    All NQ test questions (NQ-open dev = DPR's NQ test) are always removed: 2 of DPR's NQ dev
    questions repeat NQ test questions up to tokenisation; they are reported in ``pool.dropped``
    and ``pool.skipped`` and logged. Then the pool is checked against the evaluation questions of
    ``exclude`` (names or Collection objects; default ``("nq-sample",)``): any overlap raises
    :class:`LeakageError`; ``drop_overlap=True`` drops them instead, reported the same way.
    Known: one pool question ("what is the roman numeral for 50") is also a SQuAD dev question,
    so ``exclude=["squad-sample"]`` needs ``drop_overlap=True``.
    Returns a :class:`~elasticdenser.data.pool.QueryPool` (a ``list[Query]``).
    """
    from elasticdenser.data.pool import build_query_pool

    if name != QUERY_POOL:
        raise InvalidInputError(f"unknown query pool {name!r}: expected {QUERY_POOL!r}")
    root = resolve_data_dir(data_dir)
    collections: List[Collection] = []
    for item in DEFAULT_POOL_EXCLUDE if exclude is None else exclude:
        collections.append(item if isinstance(item, Collection) else load_collection(item, root))
    return build_query_pool(root, evaluation_keys(collections), drop_overlap=drop_overlap)


__all__ = [
    "Collection", "Corpus", "Document", "DprExample", "LeakageError", "Qrels", "Query",
    "available_collections", "check_leakage", "check_qrels", "dpr_examples_to_collection",
    "evaluation_keys", "iter_dpr_biencoder", "iter_jsonl", "load_beir_folder", "load_collection",
    "load_dpr_biencoder", "load_jsonl_corpus", "load_jsonl_queries", "load_local", "load_nq_open",
    "load_qa_pairs", "load_query_pool", "load_squad", "load_trec_qrels", "load_trec_run",
    "load_trec_topics", "load_tsv_corpus", "load_tsv_queries", "normalize_question", "resolve_data_dir",
]
