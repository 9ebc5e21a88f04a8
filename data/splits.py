"""Fixed train / test splits of collections whose questions are all evaluation questions.

SQuAD v1.1 dev has no training half of its own; the reranker needs labelled pairs, so
``squad-sample-test`` splits squad-sample **by article** (paragraph ids ``squad-<article>-<n>``):
questions of odd-numbered articles are the test half (``queries``, ``qrels``), questions of
even-numbered articles the training half (``train_queries`` with their paragraph as
``train_positives``). Splitting by article, not by question, keeps a test question from sharing a
paragraph -- or an article's topic -- with a training one. The corpus is all 2,067 paragraphs.

``nq-sample-test`` does the same for nq-sample, whose 2,655 NQ test questions are all evaluation
questions: split **by the Wikipedia article of the gold passage** (its title; the parity of the
title's CRC-32, stable across machines and Python versions), so questions about one article stay on
one side. The corpus is all 4,351 passages; the training half also keeps nq-sample's five DPR rows.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

from elasticdenser.data.types import Collection
from elasticdenser.errors import InvalidInputError

__all__ = ["squad_article", "load_squad_sample_test", "load_nq_sample_test"]


def squad_article(doc_id: str) -> int:
    """The article number of a squad-sample paragraph id (``squad-<article>-<paragraph>``)."""
    parts = doc_id.split("-")
    if len(parts) != 3 or parts[0] != "squad" or not parts[1].isdigit():
        raise InvalidInputError(f"{doc_id!r} is not a squad-sample paragraph id (squad-<article>-<paragraph>)")
    return int(parts[1])


def _split(coll: Collection, name: str, article: Callable[[str], int], description: str) -> Collection:
    """Odd articles' questions become the test half, even articles' the labelled training half."""
    halves = {0: [], 1: []}
    for q in coll.queries:
        articles = {article(d) for d in coll.qrels.get(q.query_id, {})}
        if len(articles) != 1:
            raise InvalidInputError(f"{coll.name} question {q.query_id} has {len(articles)} source articles, not one")
        halves[articles.pop() % 2].append(q)
    qrels = coll.qrels
    coll.name = name
    coll.queries = halves[1]
    coll.qrels = {q.query_id: qrels[q.query_id] for q in halves[1]}
    coll.train_queries = list(coll.train_queries or []) + halves[0]
    coll.train_positives = {**(coll.train_positives or {}),
                            **{q.query_id: [d for d, g in qrels[q.query_id].items() if g > 0] for q in halves[0]}}
    # the guard protects the test half only (the full sets these questions come from are held out elsewhere)
    coll.held_out_questions = [q.text for q in halves[1]]
    coll.description = description
    return coll


def load_squad_sample_test(data_dir: Path) -> Collection:
    from elasticdenser.data.samples import load_squad_sample

    return _split(load_squad_sample(data_dir), "squad-sample-test", squad_article,
                  "squad-sample split by article: odd articles' questions to test, even articles' to train")


def load_nq_sample_test(data_dir: Path) -> Collection:
    from elasticdenser.data.samples import load_nq_sample

    coll = load_nq_sample(data_dir)
    titles = {d.doc_id: d.title for d in coll.corpus}
    return _split(coll, "nq-sample-test", lambda doc_id: zlib.crc32(titles[doc_id].encode("utf-8")),
                  "nq-sample split by the gold passage's Wikipedia article: odd CRC-32 of the title to test, "
                  "even to train")
