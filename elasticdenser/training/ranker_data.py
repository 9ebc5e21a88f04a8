"""Training lists for the ranker: each query with the first stage's candidates and its positives.

A list is what one query contributes to a step: its positive (when labelled) and hard negatives
drawn from the first stage's top candidates, or (unlabelled) the top candidates themselves. The
teacher's scores over exactly these lists are what every ranker point is distilled on, so hard
negatives and distillation targets come from the retriever the ranker will serve behind.

Questions come from the collection's labelled training half (``train_queries`` with
``train_positives``: scifact's training claims, squad-sample-test's even articles) or, with no
labels, pseudo-queries cut from the corpus with their source passage as the positive. Every
question goes through the leakage guard against the collection's evaluation questions and the
``exclude`` collections.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from elasticdenser.errors import InvalidInputError

log = logging.getLogger(__name__)

__all__ = ["RankerExample", "training_questions", "first_stage_lists", "build_list"]


@dataclass
class RankerExample:
    query: str
    #: the first stage's ranked candidates: (doc id, passage text as the encoder saw it)
    candidates: List[Tuple[str, str]]
    #: labelled positives present in the corpus: (doc id, passage text); empty when unlabelled
    positives: List[Tuple[str, str]]
    #: the first stage's score of each candidate (what a first-stage weight interpolates with)
    scores: List[float] = field(default_factory=list)


def training_questions(coll, *, labels: bool = True, pseudo: int = 0, seed: int = 0,
                       exclude: Sequence = ()) -> Tuple[List[Tuple[str, List[str]]], Dict[str, int]]:
    """``[(question, [positive doc id, ...])]`` and counts of what was dropped and why."""
    from elasticdenser.data.leakage import check_leakage
    from elasticdenser.data.pseudo import pseudo_queries

    out: List[Tuple[str, List[str]]] = []
    dropped: Dict[str, int] = {}
    protected = [coll, *exclude]
    if labels and coll.train_queries:
        kept, gone = check_leakage(coll.train_queries, protected, drop_overlap=True, pool_name=f"{coll.name} training")
        dropped["leakage"] = len(gone)
        for q in kept:
            positives = coll.train_positives.get(q.query_id, [])
            if positives:
                out.append((q.text, list(positives)))
            else:
                dropped["no positive"] = dropped.get("no positive", 0) + 1
    if pseudo:
        docs = list(coll.corpus)
        made = pseudo_queries(docs, pseudo, seed=seed, kind="span")  # the recipe the ranker rows were measured with
        kept, gone = check_leakage(list(made), protected, drop_overlap=True, pool_name="pseudo-queries")
        dropped["pseudo leakage"] = len(gone)
        for q in kept:
            position = int(q.query_id[len("pseudo-"):].split("-")[0])
            out.append((q.text, [docs[position].doc_id]))
    if not out:
        raise InvalidInputError(f"{coll.name}: no training questions (no labelled training half and pseudo=0)")
    return out, dropped


def first_stage_lists(searcher, questions: Sequence[Tuple[str, List[str]]], passages: Dict[str, str], depth: int,
                      point=None, batch_size: int = 64) -> List[RankerExample]:
    """Run the retriever once over every question (``depth`` candidates each, at ``point``)."""
    texts = [q for q, _ in questions]
    hits = searcher.search_texts(texts, depth, point, batch_size=batch_size)
    out = []
    for (query, positive_ids), ranked in zip(questions, hits):
        positives = [(d, passages[d]) for d in positive_ids if d in passages]
        out.append(RankerExample(query, [(h.doc_id, passages.get(h.doc_id, h.text)) for h in ranked], positives,
                                 [float(h.score) for h in ranked]))
    return out


def build_list(example: RankerExample, size: int, rng: random.Random) -> Optional[Tuple[List[str], int]]:
    """The passages of one training list and the position of its positive (-1: unlabelled).

    Labelled: the positive first, then ``size - 1`` negatives drawn from the candidates that are not
    positives (hard negatives, in random order). Unlabelled: the top ``size`` candidates. ``None``
    when the query cannot fill a list of two.
    """
    if example.positives:
        pos_id, pos_text = example.positives[rng.randrange(len(example.positives))]
        pos_ids = {d for d, _ in example.positives}
        negatives = [t for d, t in example.candidates if d not in pos_ids]
        if not negatives:
            return None
        chosen = rng.sample(negatives, min(size - 1, len(negatives)))
        return [pos_text, *chosen], 0
    top = [t for _, t in example.candidates[:size]]
    return (top, -1) if len(top) >= 2 else None
