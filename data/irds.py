"""ir_datasets collections: ``dpr-w100/natural-questions/*``, ``dpr-w100/trivia-qa/*``, ``beir/*``, ...

The corpus is not materialised: :class:`IrdsCorpus` reads through ir_datasets' docstore, so the
21M-passage DPR Wikipedia is iterable and random-access without living in Python memory.

Offline behaviour: ir_datasets downloads whatever is missing from its cache
(``$IR_DATASETS_HOME``, default ``~/.ir_datasets``), and without a network that ends in a
``requests`` traceback from deep inside the downloader. Before touching anything we list the
dataset's cache files that are missing and, if any are and the download fails, raise one
``RuntimeError`` naming the dataset, the cache directory and the files to put there.

``dpr-w100/{natural-questions,trivia-qa}/test`` are not ir_datasets datasets (ir_datasets has
train/dev only). They are provided here as DPR's 21M-passage corpus (from the ir_datasets cache)
with DPR's test questions and answers from the data directory (``dpr-qa-topics``); they have no
qrels, only answer strings, exactly like DPR's own test evaluation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from tqdm.auto import tqdm

from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError, StateError

__all__ = [
    "DPR_TEST_TOPICS",
    "DPR_W100_FILES",
    "irds_home",
    "missing_cache_files",
    "is_irds_id",
    "IrdsCorpus",
    "load_irds",
]

#: test splits served from DPR's QA lists in the data directory (see module docstring)
DPR_TEST_TOPICS = {
    "dpr-w100/natural-questions/test": "dpr-qa-topics/topics.dpr.nq.test.txt",
    "dpr-w100/trivia-qa/test": "dpr-qa-topics/topics.dpr.trivia.test.txt.gz",
}
#: the download entries (ir_datasets' etc/downloads.json) each dpr-w100 dataset needs
DPR_W100_FILES = {
    "dpr-w100": ["docs"],
    "dpr-w100/natural-questions/train": ["docs", "nq-train"],
    "dpr-w100/natural-questions/dev": ["docs", "nq-dev"],
    "dpr-w100/natural-questions/test": ["docs"],
    "dpr-w100/trivia-qa/train": ["docs", "tqa-train"],
    "dpr-w100/trivia-qa/dev": ["docs", "tqa-dev"],
    "dpr-w100/trivia-qa/test": ["docs"],
}


def irds_home() -> Path:
    """ir_datasets' cache root, as ir_datasets itself computes it."""
    return Path(os.environ.get("IR_DATASETS_HOME", Path.home() / ".ir_datasets"))


def _downloads() -> Dict[str, Any]:
    import ir_datasets

    return json.loads((Path(ir_datasets.__file__).parent / "etc" / "downloads.json").read_text())


def missing_cache_files(dataset_id: str) -> List[Path]:
    """Cache files ir_datasets would have to download for ``dataset_id`` (empty if all present
    or if the dataset's layout is not known here: then the download error is translated instead)."""
    top = dataset_id.split("/", 1)[0]
    base = irds_home() / top
    entries = _downloads().get(top, {})
    missing: List[Path] = []
    if top == "dpr-w100":
        for key in DPR_W100_FILES.get(dataset_id, []):
            target = base / entries[key]["cache_path"]
            # what ir_datasets builds from the download and reads afterwards
            built = base / f"{entries[key]['cache_path']}.pklz4" if key == "docs" else base / key / "queries.tsv"
            if not target.exists() and not built.exists():
                missing.append(target)
    elif top == "beir":
        name = dataset_id.split("/")[1] if "/" in dataset_id else ""
        entry = entries.get(name)
        if entry and not (base / entry["cache_path"]).exists() and not (base / name / "docs.pklz4").exists():
            missing.append(base / entry["cache_path"])
    return missing


def _offline_error(dataset_id: str, missing: List[Path], exc: BaseException) -> StateError:
    files = ", ".join(str(p) for p in missing) if missing else "its source files"
    return StateError(
        f"ir_datasets dataset {dataset_id!r} is not in the local cache {irds_home() / dataset_id.split('/')[0]} "
        f"and could not be downloaded ({exc.__class__.__name__}: network unreachable?). Put {files} there "
        "(IR_DATASETS_HOME selects the cache root), or run once on a machine with network access."
    )


def is_irds_id(name: str) -> bool:
    """Whether ``name`` is a registered ir_datasets id (imports ir_datasets)."""
    import ir_datasets

    return name in ir_datasets.registry


def _is_network_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, ConnectionError) or module.startswith(("requests", "urllib3", "urllib", "socket", "http"))


def _guard(dataset_id: str, action, missing: List[Path]):
    """Run an ir_datasets call; turn download/network failures into one clear error.

    Only failures that are about getting the data are translated (a network error, or any
    OS error while cache files are known to be missing); a corrupt file that *is* in the cache
    keeps its own error.
    """
    try:
        return action()
    except OSError as exc:  # requests' errors subclass OSError
        if missing or _is_network_error(exc):
            raise _offline_error(dataset_id, missing, exc) from None
        raise


def _to_document(doc: Any) -> Document:
    title = getattr(doc, "title", "") or ""
    text = getattr(doc, "text", None)
    if text is None:
        text = doc.default_text()
    return Document(doc.doc_id, title, text)


class IrdsCorpus(Corpus):
    """A corpus read through an ir_datasets docstore (never loaded into memory as a whole).

    ``get`` is a docstore lookup; ``[position]`` uses ir_datasets' positional slicing. The first
    ``len``/``get`` builds ir_datasets' docstore if it does not exist yet (a one-off pass over the
    corpus that ir_datasets shows a progress bar for).
    """

    def __init__(self, dataset: Any, dataset_id: str, missing: Optional[List[Path]] = None):
        self._ds = dataset
        self.source = f"irds:{dataset_id}"
        self._id = dataset_id
        self._missing = missing or []
        self._store = None
        self._len: Optional[int] = None

    def _docstore(self):
        if self._store is None:
            self._store = _guard(self._id, self._ds.docs_store, self._missing)
        return self._store

    def __len__(self) -> int:
        if self._len is None:
            # ir_datasets answers an unbuilt docstore's count with the published count hint
            # (21,015,324 for dpr-w100) even when the cached file holds something else, so the
            # docstore is built first: the count is then the true one (and `get` needs it anyway).
            def count() -> int:
                store = self._docstore()
                if not store.built():
                    store.build()
                return store.count()

            self._len = int(_guard(self._id, count, self._missing))
        return self._len

    def __iter__(self) -> Iterator[Document]:
        iterator = _guard(self._id, self._ds.docs_iter, self._missing)
        for doc in tqdm(iterator, desc=self._id, unit=" docs", disable=None, leave=False):
            yield _to_document(doc)

    def __getitem__(self, position: int) -> Document:
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"{self.source}: position {position} out of range")
        return _to_document(_guard(self._id, lambda: self._ds.docs_iter()[position], self._missing))

    def get(self, doc_id: str) -> Document:
        try:
            return _to_document(_guard(self._id, lambda: self._docstore().get(doc_id), self._missing))
        except KeyError:
            raise KeyError(f"{self.source}: unknown doc id {doc_id!r}") from None

    def __contains__(self, doc_id: object) -> bool:
        try:
            self.get(str(doc_id))
            return True
        except KeyError:
            return False

    def doc_ids(self) -> List[str]:
        """All ids in corpus order (21M strings for dpr-w100: a few GB; stream instead if you can)."""
        return [d.doc_id for d in self]


def _queries(dataset: Any) -> List[Query]:
    out = []
    for q in dataset.queries_iter():
        text = getattr(q, "text", None)
        if text is None:
            text = q.default_text()
        out.append(Query(q.query_id, text, tuple(getattr(q, "answers", ()) or ())))
    return out


def _qrels(dataset: Any) -> Qrels:
    qrels: Qrels = {}
    for qrel in dataset.qrels_iter():
        qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
    return qrels


def load_irds(dataset_id: str, data_dir: Optional[Path] = None) -> Collection:
    """Load an ir_datasets id (``irds:`` prefix optional) as a :class:`Collection`.

    Queries and qrels are read into memory; the corpus stays in ir_datasets' docstore.
    Qrels keep ir_datasets' grades as they are (dpr-w100: 2 = annotated gold, 1 = contains the
    answer, 0 = hard negative, -1 = negative). ``*/train`` splits are training data: their
    questions go to ``train_queries`` and their grade > 0 passages to ``train_positives``, with
    no evaluation queries. ``dpr-w100/*/test`` need ``data_dir`` for DPR's test questions.
    """
    if dataset_id.startswith("irds:"):
        dataset_id = dataset_id[len("irds:"):]
    import ir_datasets

    missing = missing_cache_files(dataset_id)
    if dataset_id in DPR_TEST_TOPICS:
        from elasticdenser.data import resolve_data_dir
        from elasticdenser.data.formats import load_qa_pairs

        base = ir_datasets.load("dpr-w100")
        topics = resolve_data_dir(data_dir) / DPR_TEST_TOPICS[dataset_id]
        queries = load_qa_pairs(topics)
        corpus = IrdsCorpus(base, dataset_id, missing)
        _guard(dataset_id, lambda: next(iter(base.docs_iter())), missing)  # fail now, clearly, if absent
        return Collection(dataset_id, corpus, queries, {},
                          description=f"DPR 21M-passage Wikipedia (ir_datasets) with DPR test questions from {topics}")
    try:
        dataset = ir_datasets.load(dataset_id)
    except KeyError:
        raise InvalidInputError(f"unknown ir_datasets id {dataset_id!r} (see https://ir-datasets.com)") from None
    queries = _guard(dataset_id, lambda: _queries(dataset), missing) if dataset.has_queries() else []
    qrels = _guard(dataset_id, lambda: _qrels(dataset), missing) if dataset.has_qrels() else {}
    if not dataset.has_docs():
        raise InvalidInputError(f"ir_datasets id {dataset_id!r} has no documents")
    corpus = IrdsCorpus(dataset, dataset_id, missing)
    _guard(dataset_id, lambda: next(iter(dataset.docs_iter())), missing)
    unknown = [qid for qid in qrels if qid not in {q.query_id for q in queries}]
    if unknown:
        raise InvalidInputError(f"irds:{dataset_id}: qrels name {len(unknown)} unknown query id(s), e.g. {unknown[:5]}")
    if dataset_id.endswith("/train"):
        positives = {qid: [d for d, g in docs.items() if g > 0] for qid, docs in qrels.items()}
        return Collection(dataset_id, corpus, [], {}, train_queries=queries, train_positives=positives,
                          description=f"ir_datasets {dataset_id} (training split)")
    return Collection(dataset_id, corpus, queries, qrels, description=f"ir_datasets {dataset_id}")
