"""DPR's biencoder training files (``biencoder-nq-train.json`` layout: question, answers,
positive / negative / hard-negative contexts), streamed with ``ijson`` because they run to gigabytes,
and turned into a :class:`~elasticdenser.data.types.Collection` with labelled training questions.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

from tqdm.auto import tqdm

from elasticdenser.data.formats import PathLike, answers_of, record_field
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["DprExample", "iter_dpr_biencoder", "load_dpr_biencoder", "dpr_examples_to_collection"]


@dataclass
class DprExample:
    """One DPR biencoder training record: a question with its positive and negative passages."""

    query: Query
    positives: List[Document]
    hard_negatives: List[Document] = field(default_factory=list)
    negatives: List[Document] = field(default_factory=list)


def _dpr_ctx(ctx: Any, where: str, id_prefix: str) -> Document:
    if not isinstance(ctx, dict):
        raise InvalidInputError(f"{where}: expected a passage object, got {type(ctx).__name__}")
    pid = record_field(ctx, ("passage_id", "psg_id", "id"), where, "passage id")
    return Document(id_prefix + pid, ctx.get("title") or "", record_field(ctx, ("text",), where, "passage text"))


def iter_dpr_biencoder(path: PathLike, *, id_prefix: str = "", require_positive: bool = True) -> Iterator[DprExample]:
    """Stream DPR ``biencoder-*.json`` records with ijson (the train files are gigabytes).

    Passage ids come from ``passage_id`` (NQ) or ``psg_id`` (TriviaQA); query ids are record
    indices. A record without positives raises unless ``require_positive=False``.
    """
    import ijson

    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as stream:
        try:
            for index, rec in enumerate(tqdm(ijson.items(stream, "item"), desc=Path(path).name, unit=" q",
                                             disable=None, leave=False)):
                where = f"{path}: record {index}"
                if not isinstance(rec, dict):
                    raise InvalidInputError(f"{where}: expected an object, got {type(rec).__name__}")
                question = record_field(rec, ("question",), where, "question")
                answers = answers_of(rec.get("answers", []), where)
                lists = {}
                for key in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs"):
                    ctxs = rec.get(key, [])
                    if not isinstance(ctxs, list):
                        raise InvalidInputError(f"{where}: field {key!r} must be a list")
                    lists[key] = [_dpr_ctx(c, f"{where}.{key}[{i}]", id_prefix) for i, c in enumerate(ctxs)]
                if require_positive and not lists["positive_ctxs"]:
                    raise InvalidInputError(f"{where}: no positive_ctxs (DPR training needs at least one)")
                yield DprExample(Query(str(index), question.strip(), answers), lists["positive_ctxs"],
                                 lists["hard_negative_ctxs"], lists["negative_ctxs"])
        except ijson.JSONError as exc:
            raise InvalidInputError(f"{path}: malformed JSON ({exc})") from None


def load_dpr_biencoder(path: PathLike, *, id_prefix: str = "") -> List[DprExample]:
    """All records of a DPR biencoder file (see :func:`iter_dpr_biencoder`)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such file")
    return list(iter_dpr_biencoder(path, id_prefix=id_prefix))


def dpr_examples_to_collection(examples: Sequence[DprExample], name: str, source: str = "") -> Collection:
    """Turn biencoder records into a small closed retrieval collection.

    Corpus: every distinct passage id (a passage listed twice must carry the same text, else an
    error). Queries/qrels: positives grade 1. Also exposed as ``train_queries`` /
    ``train_positives``, since these files exist for training.
    """
    docs: Dict[str, Document] = {}
    qrels: Qrels = {}
    repeats = 0
    for ex in examples:
        for doc in ex.positives + ex.hard_negatives + ex.negatives:
            old = docs.get(doc.doc_id)
            if old is None:
                docs[doc.doc_id] = doc
            elif old != doc:
                raise InvalidInputError(f"{source}: passage {doc.doc_id!r} appears with two different texts")
            else:
                repeats += 1
        qrels[ex.query.query_id] = {d.doc_id: 1 for d in ex.positives}
    queries = [ex.query for ex in examples]
    coll = Collection(name, Corpus(list(docs.values()), source=source), queries, qrels,
                      train_queries=list(queries),
                      train_positives={q: list(d) for q, d in qrels.items()},
                      description=f"DPR biencoder file {source}")
    if repeats:
        coll.skipped["ctx entries repeating an already listed passage id (one corpus entry each)"] = repeats
    return coll
