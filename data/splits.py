"""Fixed train / test splits of collections whose questions are all evaluation questions.

SQuAD v1.1 dev has no training half of its own; the reranker needs labelled pairs, so
``squad-sample-test`` splits squad-sample **by article** (paragraph ids ``squad-<article>-<n>``):
questions of odd-numbered articles are the test half (``queries``, ``qrels``), questions of
even-numbered articles the training half (``train_queries`` with their paragraph as
``train_positives``). Splitting by article, not by question, keeps a test question from sharing a
paragraph -- or an article's topic -- with a training one. The corpus is all 2,067 paragraphs.
"""
from __future__ import annotations

from pathlib import Path

from elasticdenser.data.types import Collection
from elasticdenser.errors import InvalidInputError

__all__ = ["squad_article", "load_squad_sample_test"]


def squad_article(doc_id: str) -> int:
    """The article number of a squad-sample paragraph id (``squad-<article>-<paragraph>``)."""
    parts = doc_id.split("-")
    if len(parts) != 3 or parts[0] != "squad" or not parts[1].isdigit():
        raise InvalidInputError(f"{doc_id!r} is not a squad-sample paragraph id (squad-<article>-<paragraph>)")
    return int(parts[1])


def load_squad_sample_test(data_dir: Path) -> Collection:
    from elasticdenser.data.samples import load_squad_sample

    coll = load_squad_sample(data_dir)
    halves = {0: [], 1: []}
    for q in coll.queries:
        articles = {squad_article(d) for d in coll.qrels.get(q.query_id, {})}
        if len(articles) != 1:
            raise InvalidInputError(f"squad-sample question {q.query_id} has {len(articles)} source articles, not one")
        halves[articles.pop() % 2].append(q)
    qrels = coll.qrels
    coll.name = "squad-sample-test"
    coll.queries = halves[1]
    coll.qrels = {q.query_id: qrels[q.query_id] for q in halves[1]}
    coll.train_queries = halves[0]
    coll.train_positives = {q.query_id: [d for d, g in qrels[q.query_id].items() if g > 0] for q in halves[0]}
    # the guard protects the test half only (DPR's copy of these questions is the whole dev set)
    coll.held_out_questions = [q.text for q in halves[1]]
    coll.description = "squad-sample split by article: odd articles' questions to test, even articles' to train"
    return coll
