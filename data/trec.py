"""TREC files: topics, qrels (TREC and BEIR layouts, through ir_datasets' parsers) and runs (in
ranx's layout), plus the cross-file check that judgments name known queries and documents.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elasticdenser.data.formats import LocalFile, PathLike, load_tsv_queries, locate_bad_line, open_text
from elasticdenser.data.types import Corpus, Qrels, Query
from elasticdenser.errors import InvalidInputError

__all__ = ["load_trec_topics", "load_trec_qrels", "load_trec_run", "check_qrels"]


def load_trec_topics(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """TREC topics: ``qid<TAB>text`` files, or SGML ``<top><num>..<title>..`` via ir_datasets."""
    with open_text(path) as handle:
        head = handle.read(4096)
    if "<top>" not in head.lower():
        return load_tsv_queries(path, id_prefix=id_prefix)
    from typing import NamedTuple

    from ir_datasets.formats import TrecQueries
    from ir_datasets.formats.trec import DEFAULT_QTYPE_MAP

    # ir_datasets' TrecQuery wants title, desc and narr in every topic: read the fields this file has
    tags = {"title": "title", "desc": "description", "narr": "narrative"}
    present = [field for tag, field in tags.items() if f"<{tag}>" in head.lower()]
    qtype = NamedTuple("TopicFields", [("query_id", str)] + [(f, str) for f in present])
    # ir_datasets' own patterns (they strip "Number:", "Description:", ...), for the fields present
    qtype_map = {pattern: f for pattern, f in DEFAULT_QTYPE_MAP.items() if f == "query_id" or f in present}
    queries = []
    try:
        parsed = list(TrecQueries(LocalFile(path), qtype=qtype, qtype_map=qtype_map).queries_iter())
    except AssertionError as exc:  # a topic missing one of the fields the others have
        raise InvalidInputError(f"{path}: a topic lacks a field the others have ({exc})") from None
    for q in parsed:
        text = (getattr(q, "title", "") or getattr(q, "description", "") or "").strip()
        if not text:
            raise InvalidInputError(f"{path}: topic {q.query_id!r} has neither <title> nor <desc> text")
        queries.append(Query(id_prefix + q.query_id, text))
    return queries


def load_trec_qrels(path: PathLike, *, beir: Optional[bool] = None) -> Qrels:
    """TREC qrels (``qid iter docid grade``) or BEIR ``qrels/*.tsv`` (header + 3 columns),
    parsed by ir_datasets' ``TrecQrels`` / ``BeirQrels``. Conflicting duplicate judgments raise.
    """
    from ir_datasets.datasets.beir import BeirQrels
    from ir_datasets.formats import TrecQrels

    path = Path(path)
    if beir is None:
        with open_text(path) as handle:
            beir = handle.readline().strip().startswith("query-id")
    reader = BeirQrels(LocalFile(path), {}) if beir else TrecQrels(LocalFile(path), {})
    ncols = 3 if beir else 4
    qrels: Qrels = {}
    try:
        for qrel in reader.qrels_iter():
            judged = qrels.setdefault(qrel.query_id, {})
            if judged.get(qrel.doc_id, qrel.relevance) != qrel.relevance:
                raise InvalidInputError(f"{path}: conflicting grades for query {qrel.query_id!r} doc {qrel.doc_id!r}: "
                                 f"{judged[qrel.doc_id]} and {qrel.relevance}")
            judged[qrel.doc_id] = qrel.relevance
    except (RuntimeError, AssertionError, ValueError) as exc:
        if str(exc).startswith(str(path)):
            raise

        first = [True]  # the BEIR header is expected on the first non-blank line only

        def ok(line: str) -> bool:
            if beir and first[0]:
                first[0] = False
                return line.strip() == "query-id\tcorpus-id\tscore"
            cols = line.split()
            return len(cols) == ncols and cols[-1].lstrip("-").isdigit()

        lineno, line = locate_bad_line(path, ok)
        layout = ("header 'query-id<TAB>corpus-id<TAB>score' then 'qid docid grade'" if beir
                  else "'qid iter docid grade' (4 columns, integer grade)")
        raise InvalidInputError(f"{path}:{lineno}: expected {layout}, got {line!r:.100}") from None
    return qrels


def load_trec_run(path: PathLike, *, as_ranx: bool = False, name: Optional[str] = None):
    """A TREC run file (``qid Q0 docid rank score tag``) as ``{qid: {docid: score}}``.

    That dict is what ``ranx.Run.from_dict`` takes; ``as_ranx=True`` returns the ``ranx.Run``.
    Why the six columns are split here and not by a library: ``ranx.Run.from_file`` took over a
    minute for a 4,300-line run on this project's 2-core CI (numba compilation), and ir_datasets'
    ``TrecScoredDocs`` silently reuses the previous line's values when a line has 4 or 5 columns.
    Every line must have 6 columns and a numeric score; a docid ranked twice for a query raises.
    """
    run: Dict[str, Dict[str, float]] = {}
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            cols = line.split()
            try:
                if len(cols) != 6:
                    raise ValueError
                qid, _, doc_id, _, score, _ = cols
                value = float(score)
            except ValueError:
                raise InvalidInputError(f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', "
                                        f"got {line.rstrip()!r:.100}") from None
            ranked = run.setdefault(qid, {})
            if doc_id in ranked:
                raise InvalidInputError(f"{path}:{lineno}: doc {doc_id!r} ranked twice for query {qid!r}")
            ranked[doc_id] = value
    if not as_ranx:
        return run
    from ranx import Run

    return Run.from_dict(run, name=name)


def check_qrels(qrels: Qrels, queries: Sequence[Query], corpus: Optional[Corpus], source: str,
                *, allow_unknown_docs: bool = False) -> int:
    """Refuse qrels that name unknown queries (or unknown documents, unless allowed).

    Returns the number of judgments whose document is not in the corpus (only non-zero when
    ``allow_unknown_docs``: e.g. TREC DL pools lack text for many judged passages).
    """
    qids = {q.query_id for q in queries}
    unknown_q = [qid for qid in qrels if qid not in qids]
    if unknown_q:
        raise InvalidInputError(f"{source}: qrels name {len(unknown_q)} unknown query id(s), e.g. {unknown_q[:5]}")
    if corpus is None:
        return 0
    missing = [(qid, did) for qid, docs in qrels.items() for did in docs if did not in corpus]
    if missing and not allow_unknown_docs:
        raise InvalidInputError(f"{source}: qrels name {len(missing)} doc id(s) not in the corpus, e.g. {missing[:5]}")
    return len(missing)
