"""Whole collections from local files: a BEIR folder, a SQuAD v1.1 file, or any path
:func:`load_local` recognises (a folder, a DPR biencoder file, a corpus with topics and qrels).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from tqdm.auto import tqdm

from elasticdenser.data.dpr import dpr_examples_to_collection, load_dpr_biencoder
from elasticdenser.data.formats import (
    PathLike,
    answers_of,
    load_jsonl_corpus,
    load_jsonl_queries,
    open_text,
    record_field,
)
from elasticdenser.data.trec import check_qrels, load_trec_qrels
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["load_beir_folder", "load_squad", "load_local"]


def load_beir_folder(path: PathLike, split: str = "test", name: Optional[str] = None,
                     *, allow_unknown_docs: bool = False) -> Collection:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Evaluation queries are those judged in ``split`` (BEIR's queries.jsonl holds all splits;
    the others are counted in ``skipped``); ``qrels/train.tsv``, when present and not the split,
    becomes ``train_queries`` / ``train_positives`` (grade > 0). Qrels naming unknown queries
    always raise; unknown documents raise unless ``allow_unknown_docs`` (an exported ``trec-dl``
    keeps judgments of passages the pools have no text for) and are then counted in ``skipped``.
    """
    root = Path(path)
    for part in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / part).is_file():
            raise MissingFileError(f"{root}: not a BEIR folder, missing {part}")
    corpus = load_jsonl_corpus(root / "corpus.jsonl")
    all_queries = load_jsonl_queries(root / "queries.jsonl")
    by_id = {q.query_id: q for q in all_queries}
    qrels = load_trec_qrels(root / "qrels" / f"{split}.tsv", beir=True)
    unknown_docs = check_qrels(qrels, all_queries, corpus, str(root / "qrels" / f"{split}.tsv"),
                               allow_unknown_docs=allow_unknown_docs)
    queries = [q for q in all_queries if q.query_id in qrels]
    collection = Collection(name or root.name, corpus, queries, qrels, description=f"BEIR folder {root} ({split})")
    if unknown_docs:
        collection.skipped["judgments whose document is not in corpus.jsonl (kept in qrels)"] = unknown_docs
    train_file = root / "qrels" / "train.tsv"
    if split != "train" and train_file.is_file():
        train = load_trec_qrels(train_file, beir=True)
        check_qrels(train, all_queries, corpus, str(train_file))
        collection.train_queries = [by_id[qid] for qid in train]
        collection.train_positives = {qid: [d for d, g in docs.items() if g > 0] for qid, docs in train.items()}
    unused = len(all_queries) - len(queries) - len(collection.train_queries)
    if unused:
        collection.skipped[f"queries not judged in qrels/{split}.tsv (other splits)"] = unused
    return collection


def load_squad(path: PathLike, name: str = "squad", id_prefix: str = "squad-") -> Collection:
    """SQuAD v1.1 JSON as an open-domain collection.

    Corpus: every paragraph, id ``<prefix><article>-<paragraph>`` (indices, stable), title = the
    article title with underscores as spaces. Queries: every question (SQuAD's own id), answers =
    the distinct reference answer texts. Qrels: the question's own paragraph, grade 1.
    """
    with open_text(path) as handle:
        try:
            payload = json.load(handle)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise InvalidInputError(f"{path}: expected SQuAD JSON {{'version', 'data': [articles]}}")
    docs: List[Document] = []
    queries: List[Query] = []
    qrels: Qrels = {}
    for a, article in enumerate(tqdm(payload["data"], desc="squad articles", disable=None, leave=False)):
        where = f"{path}: data[{a}]"
        title = record_field(article, ("title",), where, "article title").replace("_", " ")
        for p, para in enumerate(record_field(article, ("paragraphs",), where, "paragraphs", list)):
            pwhere = f"{where}.paragraphs[{p}]"
            doc_id = f"{id_prefix}{a}-{p}"
            docs.append(Document(doc_id, title, record_field(para, ("context",), pwhere, "context")))
            for k, qa in enumerate(record_field(para, ("qas",), pwhere, "qas", list)):
                qwhere = f"{pwhere}.qas[{k}]"
                qid = record_field(qa, ("id",), qwhere, "question id")
                if qid in qrels:
                    raise InvalidInputError(f"{qwhere}: duplicate question id {qid!r}")
                answers = [record_field(ans, ("text",), f"{qwhere}.answers", "answer text")
                           for ans in record_field(qa, ("answers",), qwhere, "answers", list)]
                queries.append(Query(qid, record_field(qa, ("question",), qwhere, "question").strip(),
                                     answers_of(answers, qwhere)))
                qrels[qid] = {doc_id: 1}
    return Collection(name, Corpus(docs, source=str(path)), queries, qrels,
                      description=f"SQuAD v1.1 {Path(path).name} as open-domain retrieval over its paragraphs")


def load_local(path: PathLike, name: Optional[str] = None) -> Collection:
    """Load a local path by sniffing its format: BEIR folder, SQuAD JSON, or DPR biencoder JSON."""
    path = Path(path)
    if path.is_dir():
        return load_beir_folder(path, name=name)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file or directory")
    with open_text(path) as handle:
        head = handle.read(2048).lstrip()
    if head.startswith("{") and ('"data"' in head[:200] or '"version"' in head[:50]):
        return load_squad(path, name=name or path.stem)
    if head.startswith("[") and "question" in head:
        return dpr_examples_to_collection(load_dpr_biencoder(path), name or path.stem, str(path))
    raise InvalidInputError(f"{path}: unrecognised format; expected a BEIR folder, SQuAD v1.1 JSON or DPR biencoder JSON. "
                     "For corpora/queries/qrels files use load_jsonl_corpus, load_qa_pairs, load_trec_qrels, ...")
