"""The few types every stage consumes: a corpus, queries, qrels, and a collection of them.

A corpus is random-access by doc id and iterable in a stable order, but it does not have to
hold its documents as Python objects: a 21M-passage corpus is backed by ir_datasets' docstore
(or any other object implementing the same three methods).
"""
from __future__ import annotations

import operator
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from elasticdenser.errors import InvalidInputError

__all__ = ["is_blank", "check_k", "check_id", "Document", "Query", "Corpus", "Collection"]


def is_blank(text: Any) -> bool:
    """Not a string, or nothing but whitespace and invisible format characters (zero-width space,
    joiners, BOM): what every search entry point refuses as an empty query."""
    if not isinstance(text, str):
        return True
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def check_k(k: Any) -> int:
    """``k`` (result depth) as given: an integer >= 1; ``2.7`` or ``True`` is an error, not 2 or 1."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)  # ints and NumPy integers; floats and strings are refused
    except TypeError:
        raise InvalidInputError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    return k


def check_id(value: Any, where: str, what: str = "document id") -> str:
    """An id that every file the experiment writes can hold: a non-empty string with no whitespace
    (a newline would break ``doc_ids.txt``, a space a TREC run line). ``where`` names the file:line."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{where}: {what} must be a non-empty string, got {value!r}")
    if any(ch.isspace() for ch in value):
        raise InvalidInputError(f"{where}: {what} {value!r} contains whitespace, which run files and doc_ids.txt cannot hold")
    return value


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """What the encoder sees: ``title + " " + text`` (DPR / BEIR convention)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class Query:
    query_id: str
    text: str
    answers: Tuple[str, ...] = ()


#: TREC-style graded judgments: {query_id: {doc_id: grade}}; the layout ranx.Qrels.from_dict takes.
Qrels = Dict[str, Dict[str, int]]


class Corpus:
    """Ordered, random-access document collection.

    Subclasses backed by on-disk stores override ``__len__``, ``__iter__``, ``get`` and
    ``doc_ids``; the base class is the in-memory version used for the sample collections.
    """

    def __init__(self, documents: Sequence[Document], source: str = "<memory>"):
        self._docs: List[Document] = list(documents)
        self._index: Dict[str, int] = {}
        for position, doc in enumerate(self._docs):
            if doc.doc_id in self._index:
                raise InvalidInputError(f"{source}: duplicate doc id {doc.doc_id!r} "
                                        f"(entries {self._index[doc.doc_id]} and {position})")
            self._index[doc.doc_id] = position
        self.source = source

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[Document]:
        return iter(self._docs)

    def __getitem__(self, position: int) -> Document:
        return self._docs[position]

    def get(self, doc_id: str) -> Document:
        try:
            return self._docs[self._index[doc_id]]
        except KeyError:
            raise KeyError(f"{self.source}: unknown doc id {doc_id!r}") from None

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._index

    def doc_ids(self) -> List[str]:
        return [d.doc_id for d in self._docs]


@dataclass
class Collection:
    """A corpus with its evaluation queries and judgments.

    ``eval_queries`` are the questions this collection evaluates on: the leakage guard refuses
    any training pool that contains one of them.
    """

    name: str
    corpus: Corpus
    queries: List[Query]
    qrels: Qrels = field(default_factory=dict)
    train_queries: List[Query] = field(default_factory=list)
    train_positives: Dict[str, List[str]] = field(default_factory=dict)
    description: str = ""
    #: Evaluation questions beyond ``queries`` that must stay out of training too. nq-sample
    #: evaluates on 2,655 NQ test questions but holds out all 3,610 (NQ-open dev = DPR's NQ test).
    held_out_questions: List[str] = field(default_factory=list)
    #: Things skipped on purpose while loading, counted by reason (e.g. duplicate passages),
    #: so nothing disappears silently; ``data show`` prints them.
    skipped: Dict[str, int] = field(default_factory=dict)

    @property
    def eval_queries(self) -> List[Query]:
        return self.queries

    def evaluation_questions(self) -> List[str]:
        """Every question text the leakage guard must keep out of training pools."""
        return [q.text for q in self.queries] + list(self.held_out_questions)

    def _distinct_evaluation_questions(self) -> int:
        from elasticdenser.data.leakage import (
            normalize_question,  # leakage imports this module
        )

        return len({normalize_question(t) for t in self.evaluation_questions()})

    def summary(self) -> Mapping[str, int]:
        return {
            "documents": len(self.corpus),
            "queries": len(self.queries),
            "queries_with_answers": sum(1 for q in self.queries if q.answers),
            "qrels": sum(len(v) for v in self.qrels.values()),
            "judged_queries": len(self.qrels),
            "train_queries": len(self.train_queries),
            "train_positives": sum(len(v) for v in self.train_positives.values()),
            "held_out_questions": self._distinct_evaluation_questions(),
        }
