"""Where training questions come from, and in which shares: the query sources of a train config.

A source is written ``KIND[:PATH][@WEIGHT]``:

- ``pool``: the built-in NQ/TriviaQA ``query-pool`` (needs the data directory);
- ``pseudo[:RECIPE[:MIN-MAX]]``: pseudo-queries cut from the training corpus (:mod:`elasticdenser.data.pseudo`),
  by the config's ``pseudo_kind`` or the recipe named (``pseudo:title@1 pseudo:sentence@1`` mixes two),
  ``MIN-MAX`` words long (default: the config's ``pseudo_min_words``-``pseudo_max_words``), e.g.
  ``pseudo@1 pseudo:prose:30-90@0.5`` adds long spans of running text to the default sentences;
- ``file:PATH``: a user's unlabeled query log (TREC topics, jsonl, tsv, one query per line;
  ``.parquet``/``.arrow``/folders through ``datasets``) -- the CLI's ``--queries PATH``;
- ``hf:PATH``: a ``datasets`` source (``save_to_disk`` folder, parquet, jsonl), Tevatron rows
  included: their ``positive_passages`` become positives where the corpus holds those ids.

``@WEIGHT`` is the source's share of the example stream (``pool@1 pseudo@1`` = half each). Give
every source a weight or none: without weights the sources are concatenated (each example equally
likely). The collection's labelled train split, when used, keeps its natural share.

The leakage guard covers every source: a question equal (after normalisation) to an evaluation
question of a protected collection raises, or with ``drop_overlap`` is dropped and counted;
pseudo-queries that collide are always dropped and counted (they are cut from documents, not
chosen by anyone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from elasticdenser.data.pseudo import parse_recipe
from elasticdenser.errors import InvalidInputError

__all__ = ["SOURCE_KINDS", "QuerySource", "parse_source", "parse_sources", "default_sources", "stream_shares"]

SOURCE_KINDS = ("pool", "pseudo", "file", "hf")
_NEEDS_PATH = ("file", "hf")


@dataclass(frozen=True)
class QuerySource:
    kind: str
    path: Optional[str] = None
    weight: Optional[float] = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind

    def __str__(self) -> str:
        return self.name + (f"@{self.weight:g}" if self.weight is not None else "")


def parse_source(spec: str) -> QuerySource:
    """``KIND[:PATH][@WEIGHT]`` -> :class:`QuerySource` (``query-pool`` is an alias of ``pool``)."""
    text = str(spec).strip()
    weight = None
    head, sep, tail = text.rpartition("@")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            head = text  # an '@' inside a path, not a weight
        else:
            text = head
            if not (weight > 0 and math.isfinite(weight)):
                raise InvalidInputError(f"query source {spec!r}: weight must be a finite number > 0")
    kind, _, path = text.partition(":")
    kind = {"query-pool": "pool"}.get(kind.strip(), kind.strip())
    if kind not in SOURCE_KINDS:
        raise InvalidInputError(f"query source {spec!r}: kind must be one of {', '.join(SOURCE_KINDS)} "
                                "(written KIND[:PATH][@WEIGHT], e.g. pseudo@1, file:queries.tsv@2)")
    if kind in _NEEDS_PATH and not path.strip():
        raise InvalidInputError(f"query source {spec!r}: {kind} needs a path ({kind}:PATH)")
    if kind == "pseudo" and path:
        try:
            parse_recipe(path, 1, 1)
        except InvalidInputError as exc:
            raise InvalidInputError(f"query source {spec!r}: {exc}") from None
    if kind not in _NEEDS_PATH + ("pseudo",) and path:
        raise InvalidInputError(f"query source {spec!r}: {kind} takes no path")
    return QuerySource(kind, path.strip() or None, weight)


def parse_sources(specs: Sequence[str]) -> List[QuerySource]:
    sources = [parse_source(s) for s in specs]
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise InvalidInputError(f"query sources {[str(s) for s in sources]}: give every source a weight or none")
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInputError(f"query sources: {', '.join(repeated)} listed more than once")
    return sources


def default_sources(pool_available: bool) -> List[QuerySource]:
    """What ``sources: null`` means: pseudo-queries of the corpus, mixed 1:1 with the built-in pool
    when its files are there (BENCHMARKS.md, "Label-free corpus adaptation", is the measurement)."""
    if pool_available:
        return [QuerySource("pool", weight=1.0), QuerySource("pseudo", weight=1.0)]
    return [QuerySource("pseudo")]


def stream_shares(sizes: Dict[str, int], weights: Dict[str, Optional[float]], natural: Sequence[str] = ()) -> Dict[str, float]:
    """Each source's share of the example stream: by weight, or by size when no source has one;
    the ``natural`` sources (the labelled split) keep their size share either way."""
    total = sum(sizes.values())
    if total == 0:
        return {}
    fixed = {k: sizes[k] / total for k in natural if k in sizes}
    rest = [k for k in sizes if k not in fixed and sizes[k] > 0]
    if not rest:
        return fixed
    if any(weights.get(k) is None for k in rest):
        scale = sum(sizes[k] for k in rest)
        raw = {k: float(sizes[k]) for k in rest}
    else:
        scale = sum(float(weights[k]) for k in rest)
        raw = {k: float(weights[k]) for k in rest}
    left = 1.0 - sum(fixed.values())
    return {**fixed, **{k: left * v / scale for k, v in raw.items()}}

