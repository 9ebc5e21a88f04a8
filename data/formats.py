"""Loaders for local files: BEIR folders, DPR biencoder JSON, DPR/Pyserini QA lists, SQuAD v1.1,
NQ-open, TREC topics/qrels/runs, and generic jsonl/tsv corpora and queries.

Parsing is left to real parsers: ``json`` for JSON lines (one record per line, so errors can name
the line), ``ijson`` for DPR biencoder files (gigabytes; streamed), ir_datasets' ``TrecQrels`` /
``BeirQrels`` / ``TrecQueries`` / ``TsvQueries`` for TREC and BEIR judgments and topics, ``csv`` +
``ast.literal_eval`` for DPR's QA lists (as DPR reads them). TREC runs come out in ranx's
``Run.from_dict`` layout (see :func:`load_trec_run` for why their columns are split here).
What this module adds is the thing those parsers lack: errors that name the file, the line and
the field, and checks across files (duplicate ids, qrels naming unknown queries).

Why not HF ``datasets.load_dataset("json", ...)``: it converts to Arrow in a cache folder and its
errors do not name the offending line; here every record is one ``json.loads`` with
``file:line`` in any error. Why not ir_datasets' ``BeirDocs`` for BEIR corpora: it builds its docstore under
``$IR_DATASETS_HOME/beir/<name>``, not next to a user's local folder, so local BEIR corpora are
read line by line here instead.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from tqdm.auto import tqdm

from elasticdenser.errors import InvalidInputError, MissingFileError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

ID_FIELDS = ("_id", "id", "doc_id", "docid", "pid")
TEXT_FIELDS = ("text", "contents", "content", "body", "passage")
QID_FIELDS = ("_id", "id", "query_id", "qid")
QTEXT_FIELDS = ("text", "query", "question")
ANSWER_FIELDS = ("answers", "answer")


# --------------------------------------------------------------------------- low-level helpers

def open_text(path: PathLike) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``*.gz``; a missing file names its path."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: PathLike, desc: Optional[str] = None) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line of a JSON-lines file.

    A line that is not a JSON object raises ``ValueError("<file>:<line>: ...")``.
    """
    with open_text(path) as handle:
        for lineno, line in enumerate(tqdm(handle, desc=desc or Path(path).name, unit=" lines",
                                           disable=None, leave=False), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise InvalidInputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _field(record: Dict[str, Any], names: Sequence[str], where: str, what: str, kind: type = str) -> Any:
    """First present field of ``names``; a clear error naming the place and the fields expected."""
    for name in names:
        if name in record and record[name] is not None:
            value = record[name]
            if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)  # numeric ids are common (e.g. BEIR scifact)
            if not isinstance(value, kind):
                raise InvalidInputError(f"{where}: field {name!r} ({what}) must be {kind.__name__}, got {type(value).__name__}")
            return value
    raise InvalidInputError(f"{where}: missing field for {what}: expected one of {list(names)}, found {sorted(record)}")


def _answers(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise InvalidInputError(f"{where}: answers must be a list of strings, got {value!r:.80}")
    return tuple(dict.fromkeys(value))  # order kept; repeated identical strings add nothing to matching


class _LocalFile:
    """The ``dlc`` interface (``stream()``, ``path()``) ir_datasets' format classes read from."""

    def __init__(self, path: PathLike):
        from ir_datasets.util import GzipExtract, LocalDownload

        self._path = Path(path)
        if not self._path.is_file():
            raise MissingFileError(f"{self._path}: no such file")
        local = LocalDownload(self._path, mkdir=False)
        self._dlc = GzipExtract(local) if self._path.suffix == ".gz" else local

    def stream(self):
        return self._dlc.stream()

    def path(self, force: bool = True) -> Path:
        return self._path


def _locate_bad_line(path: PathLike, ok: Callable[[str], bool]) -> Tuple[int, str]:
    """Error path only: find the first line a library parser rejected, to name it."""
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip() and not ok(line):
                return lineno, line.rstrip("\n")
    return 0, ""


# --------------------------------------------------------------------------- corpora

def load_jsonl_corpus(path: PathLike, *, id_field: Optional[str] = None, title_field: str = "title",
                      text_field: Optional[str] = None, id_prefix: str = "") -> Corpus:
    """Generic / BEIR ``corpus.jsonl``: ``{"_id"|"id"|..., "title"?, "text"|"contents"|...}``."""
    ids = (id_field,) if id_field else ID_FIELDS
    texts = (text_field,) if text_field else TEXT_FIELDS
    docs: List[Document] = []
    seen: Dict[str, int] = {}
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = id_prefix + _field(rec, ids, where, "doc id")
        if doc_id in seen:
            raise InvalidInputError(f"{where}: duplicate doc id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        title = rec.get(title_field) or ""
        if not isinstance(title, str):
            raise InvalidInputError(f"{where}: field {title_field!r} must be a string")
        docs.append(Document(doc_id, title, _field(rec, texts, where, "document text")))
    return Corpus(docs, source=str(path))


def load_tsv_corpus(path: PathLike, *, columns: Sequence[str] = ("doc_id", "text", "title"),
                    id_prefix: str = "") -> Corpus:
    """TSV corpus, DPR ``psgs_w100.tsv`` layout by default (``id<TAB>text<TAB>title``).

    A first line equal to the column names (DPR writes ``id text title``) is a header.
    """
    if "doc_id" not in columns or "text" not in columns:
        raise InvalidInputError(f"columns must name doc_id and text, got {list(columns)}")
    docs: List[Document] = []
    seen: Dict[str, int] = {}
    with open_text(path) as handle:
        for lineno, line in enumerate(tqdm(handle, desc=Path(path).name, unit=" lines", disable=None, leave=False), 1):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if lineno == 1 and cols[0] in ("id", "doc_id", "docid", "_id"):
                continue  # header
            if len(cols) != len(columns):
                raise InvalidInputError(f"{path}:{lineno}: expected {len(columns)} tab-separated columns {list(columns)}, got {len(cols)}")
            rec = dict(zip(columns, cols))
            doc_id = id_prefix + rec["doc_id"]
            if doc_id in seen:
                raise InvalidInputError(f"{path}:{lineno}: duplicate doc id {doc_id!r} (first on line {seen[doc_id]})")
            seen[doc_id] = lineno
            docs.append(Document(doc_id, rec.get("title", ""), rec["text"]))
    return Corpus(docs, source=str(path))


# --------------------------------------------------------------------------- queries

def load_jsonl_queries(path: PathLike, *, id_field: Optional[str] = None, text_field: Optional[str] = None,
                       id_prefix: str = "") -> List[Query]:
    """Generic / BEIR ``queries.jsonl``; answers from ``answers``/``answer`` or ``metadata.answers``.

    Records without an id get their 0-based record index as id (NQ-open style files).
    """
    ids = (id_field,) if id_field else QID_FIELDS
    texts = (text_field,) if text_field else QTEXT_FIELDS
    queries: List[Query] = []
    seen: Dict[str, int] = {}
    for index, (lineno, rec) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        if any(name in rec for name in ids):
            qid = id_prefix + _field(rec, ids, where, "query id")
        else:
            qid = f"{id_prefix}{index}"
        if qid in seen:
            raise InvalidInputError(f"{where}: duplicate query id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        answers: Tuple[str, ...] = ()
        meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
        for source in (rec, meta):
            for name in ANSWER_FIELDS:
                if name in source:
                    answers = _answers(source[name], f"{where}: field {name!r}")
                    break
            if answers:
                break
        text = _field(rec, texts, where, "query text")
        if not text.strip():
            raise InvalidInputError(f"{where}: empty query text")
        queries.append(Query(qid, text, answers))
    return queries


def load_tsv_queries(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """``qid<TAB>text`` topics (TREC DL, anserini/BEIR topics), parsed by ir_datasets' TsvQueries."""
    from ir_datasets.formats import TsvQueries

    queries: List[Query] = []
    seen: Dict[str, int] = {}
    try:
        for number, q in enumerate(TsvQueries(_LocalFile(path)).queries_iter(), 1):
            qid = id_prefix + q.query_id
            if qid in seen:
                raise InvalidInputError(f"{path}: duplicate query id {qid!r} (records {seen[qid]} and {number})")
            seen[qid] = number
            queries.append(Query(qid, q.text))
    except (RuntimeError, TypeError) as exc:
        lineno, line = _locate_bad_line(path, lambda l: len(l.rstrip("\n").split("\t")) == 2)
        raise InvalidInputError(f"{path}:{lineno}: expected 'qid<TAB>text', got {line!r:.100} ({exc})") from None
    return queries


def load_qa_pairs(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """DPR / Pyserini question-answer lists; query id = ``id_prefix`` + 0-based line index.

    Accepts, per line, ``question<TAB>['a', 'b']`` (Pyserini ``topics.dpr.*.txt``, a Python list
    literal; tab-separated CSV quoting as DPR writes it), DPR's ``qas/*.csv``
    (``question<TAB>["a"]``), and JSON lines
    ``{"question": ..., "answer"|"answers": [...]}`` (``topics.dpr.squad/wq/curated``, NQ-open).
    """
    queries: List[Query] = []
    with open_text(path) as handle:
        for index, line in enumerate(tqdm(handle, desc=Path(path).name, unit=" lines", disable=None, leave=False)):
            lineno = index + 1
            where = f"{path}:{lineno}"
            stripped = line.strip()
            if not stripped:
                raise InvalidInputError(f"{where}: blank line in a question-answer list (ids are line indices)")
            if stripped.startswith("{"):
                try:
                    rec = json.loads(stripped)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{where}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
                text = _field(rec, ("question", "query", "text"), where, "question")
                answers = _answers(_field(rec, ANSWER_FIELDS, where, "answers", object), where)
            else:
                # DPR reads its qas files with csv.reader(delimiter="\t"): fields holding quotes are
                # CSV-quoted (TriviaQA: '"[\'""Macbeth""\']"'), so a plain split would corrupt them.
                cols = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
                if len(cols) != 2:
                    raise InvalidInputError(f"{where}: expected 'question<TAB>[answers]' or a JSON object, got {len(cols)} tab-separated columns")
                text, raw = cols
                try:
                    value = ast.literal_eval(raw.strip())
                except (ValueError, SyntaxError) as exc:
                    raise InvalidInputError(f"{where}: answers {raw.strip()!r:.80} are not a list literal ({exc.__class__.__name__})") from None
                answers = _answers(value, where)
            if not text.strip():
                raise InvalidInputError(f"{where}: empty question")
            queries.append(Query(f"{id_prefix}{index}", text.strip(), answers))
    return queries


def load_nq_open(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """NQ-open JSON lines ``{"question", "answer": [...]}`` (Google's ``NQ-open.*.jsonl``).

    Both fields are required; ids are 0-based line indices.
    """
    queries: List[Query] = []
    for index, (lineno, rec) in enumerate(iter_jsonl(path)):
        where = f"{path}:{lineno}"
        text = _field(rec, ("question",), where, "question")
        answers = _answers(_field(rec, ("answer",), where, "answer list", object), where)
        queries.append(Query(f"{id_prefix}{index}", text, answers))
    return queries


def load_trec_topics(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """TREC topics: ``qid<TAB>text`` files, or SGML ``<top><num>..<title>..`` via ir_datasets."""
    with open_text(path) as handle:
        head = handle.read(4096)
    if "<top>" not in head.lower():
        return load_tsv_queries(path, id_prefix=id_prefix)
    from ir_datasets.formats import TrecQueries

    queries = []
    for q in TrecQueries(_LocalFile(path)).queries_iter():
        text = (getattr(q, "title", "") or getattr(q, "description", "") or "").strip()
        if not text:
            raise InvalidInputError(f"{path}: topic {q.query_id!r} has neither <title> nor <desc> text")
        queries.append(Query(id_prefix + q.query_id, text))
    return queries


# --------------------------------------------------------------------------- judgments and runs

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
    reader = BeirQrels(_LocalFile(path), {}) if beir else TrecQrels(_LocalFile(path), {})
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

        def ok(line: str, _first=[True]) -> bool:
            if beir and _first[0]:
                _first[0] = False
                return line.strip() == "query-id\tcorpus-id\tscore"
            cols = line.split()
            return len(cols) == ncols and cols[-1].lstrip("-").isdigit()

        lineno, line = _locate_bad_line(path, ok)
        layout = "header 'query-id<TAB>corpus-id<TAB>score' then 'qid docid grade'" if beir else "'qid iter docid grade' (4 columns, integer grade)"
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
                raise InvalidInputError(f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', got {line.rstrip()!r:.100}") from None
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


# --------------------------------------------------------------------------- collections

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
        title = _field(article, ("title",), where, "article title").replace("_", " ")
        for p, para in enumerate(_field(article, ("paragraphs",), where, "paragraphs", list)):
            pwhere = f"{where}.paragraphs[{p}]"
            doc_id = f"{id_prefix}{a}-{p}"
            docs.append(Document(doc_id, title, _field(para, ("context",), pwhere, "context")))
            for k, qa in enumerate(_field(para, ("qas",), pwhere, "qas", list)):
                qwhere = f"{pwhere}.qas[{k}]"
                qid = _field(qa, ("id",), qwhere, "question id")
                if qid in qrels:
                    raise InvalidInputError(f"{qwhere}: duplicate question id {qid!r}")
                answers = [_field(ans, ("text",), f"{qwhere}.answers", "answer text")
                           for ans in _field(qa, ("answers",), qwhere, "answers", list)]
                queries.append(Query(qid, _field(qa, ("question",), qwhere, "question").strip(), _answers(answers, qwhere)))
                qrels[qid] = {doc_id: 1}
    return Collection(name, Corpus(docs, source=str(path)), queries, qrels,
                      description=f"SQuAD v1.1 {Path(path).name} as open-domain retrieval over its paragraphs")


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
    pid = _field(ctx, ("passage_id", "psg_id", "id"), where, "passage id")
    return Document(id_prefix + pid, ctx.get("title") or "", _field(ctx, ("text",), where, "passage text"))


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
                question = _field(rec, ("question",), where, "question")
                answers = _answers(rec.get("answers", []), where)
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
