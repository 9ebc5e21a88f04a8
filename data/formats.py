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
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from tqdm.auto import tqdm

from elasticdenser.data.types import Corpus, Document, Query, check_id
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = [
    "ID_FIELDS",
    "TEXT_FIELDS",
    "QID_FIELDS",
    "QTEXT_FIELDS",
    "ANSWER_FIELDS",
    "Utf8Text",
    "open_text",
    "iter_jsonl",
    "record_field",
    "answers_of",
    "data_file",
    "LocalFile",
    "locate_bad_line",
    "load_jsonl_corpus",
    "load_tsv_corpus",
    "load_jsonl_queries",
    "load_tsv_queries",
    "load_qa_pairs",
    "load_nq_open",
]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

ID_FIELDS = ("_id", "id", "doc_id", "docid", "pid")
TEXT_FIELDS = ("text", "contents", "content", "body", "passage")
QID_FIELDS = ("_id", "id", "query_id", "qid")
QTEXT_FIELDS = ("text", "query", "question")
ANSWER_FIELDS = ("answers", "answer")


# --------------------------------------------------------------------------- low-level helpers

class Utf8Text:
    """A UTF-8 text file read as lines (or whole), whose decoding errors name the file and the line.

    Python's own text layer says only "can't decode byte 0xe9 in position 26"; every loader reads
    through this instead, so a Latin-1 corpus is refused as ``corpus.jsonl:3: not UTF-8 ...``.
    """

    def __init__(self, path: Path, raw):
        self.path, self._raw, self._line = path, raw, 0

    def __enter__(self) -> "Utf8Text":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.close()

    def _decode(self, data: bytes, first_line: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + data[: exc.start].count(b"\n")
            raise InvalidInputError(f"{self.path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); convert the file "
                                    "to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None

    def __iter__(self) -> Iterator[str]:
        for data in self._raw:
            self._line += 1
            yield self._decode(data, self._line)

    def readline(self) -> str:
        data = self._raw.readline()
        self._line += 1
        return self._decode(data, self._line)

    def read(self, size: int = -1) -> str:
        data = self._raw.read(size)
        if 0 <= size and data:  # a prefix may end inside a character: decode what is complete
            data = data[: len(data) - _incomplete_tail(data)]
        text = self._decode(data, self._line + 1)
        self._line += data.count(b"\n")
        return text


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a UTF-8 character that is cut off."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return back if need > back else 0
    return 0


def open_text(path: PathLike) -> Utf8Text:
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``; a missing file names its path."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    return Utf8Text(path, gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb"))


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


def record_field(record: Dict[str, Any], names: Sequence[str], where: str, what: str, kind: type = str) -> Any:
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


def answers_of(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise InvalidInputError(f"{where}: answers must be a list of strings, got {value!r:.80}")
    return tuple(dict.fromkeys(value))  # order kept; repeated identical strings add nothing to matching


def data_file(data_dir: Path, relative: str) -> Path:
    """``data_dir / relative``, which must exist (the error names the data directory's README)."""
    path = data_dir / relative
    if not path.is_file():
        raise MissingFileError(f"{path}: missing from the data directory {data_dir} (see its README.md)")
    return path


class LocalFile:
    """The ``dlc`` interface (``stream()``, ``path()``) ir_datasets' format classes read from."""

    def __init__(self, path: PathLike):
        from ir_datasets.util import GzipExtract, LocalDownload

        self._path = Path(path)
        if not self._path.is_file():
            raise MissingFileError(f"{self._path}: no such file")
        local = LocalDownload(self._path, mkdir=False)
        self._dlc = GzipExtract(local) if self._path.suffix == ".gz" else local
        self._checked = False

    def stream(self):
        if not self._checked:  # topics and qrels are small: check the encoding first, so that an error names the line
            with open_text(self._path) as handle:
                for _ in handle:
                    pass
            self._checked = True
        return self._dlc.stream()

    def path(self, force: bool = True) -> Path:
        return self._path


def locate_bad_line(path: PathLike, ok: Callable[[str], bool]) -> Tuple[int, str]:
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
        doc_id = check_id(id_prefix + record_field(rec, ids, where, "doc id"), where)
        if doc_id in seen:
            raise InvalidInputError(f"{where}: duplicate doc id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        title = rec.get(title_field) or ""
        if not isinstance(title, str):
            raise InvalidInputError(f"{where}: field {title_field!r} must be a string")
        docs.append(Document(doc_id, title, record_field(rec, texts, where, "document text")))
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
                raise InvalidInputError(f"{path}:{lineno}: expected {len(columns)} tab-separated columns {list(columns)}, "
                                        f"got {len(cols)}")
            rec = dict(zip(columns, cols))
            doc_id = check_id(id_prefix + rec["doc_id"], f"{path}:{lineno}")
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
            qid = check_id(id_prefix + record_field(rec, ids, where, "query id"), where, "query id")
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
                    answers = answers_of(source[name], f"{where}: field {name!r}")
                    break
            if answers:
                break
        text = record_field(rec, texts, where, "query text")
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
        for number, q in enumerate(TsvQueries(LocalFile(path)).queries_iter(), 1):
            qid = check_id(id_prefix + q.query_id, f"{path}: record {number}", "query id")
            if qid in seen:
                raise InvalidInputError(f"{path}: duplicate query id {qid!r} (records {seen[qid]} and {number})")
            seen[qid] = number
            queries.append(Query(qid, q.text))
    except (RuntimeError, TypeError) as exc:
        lineno, line = locate_bad_line(path, lambda text: len(text.rstrip("\n").split("\t")) == 2)
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
                text = record_field(rec, ("question", "query", "text"), where, "question")
                answers = answers_of(record_field(rec, ANSWER_FIELDS, where, "answers", object), where)
            else:
                # DPR reads its qas files with csv.reader(delimiter="\t"): fields holding quotes are
                # CSV-quoted (TriviaQA: '"[\'""Macbeth""\']"'), so a plain split would corrupt them.
                cols = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))
                if len(cols) != 2:
                    raise InvalidInputError(f"{where}: expected 'question<TAB>[answers]' or a JSON object, "
                                            f"got {len(cols)} tab-separated columns")
                text, raw = cols
                try:
                    value = ast.literal_eval(raw.strip())
                except (ValueError, SyntaxError) as exc:
                    raise InvalidInputError(f"{where}: answers {raw.strip()!r:.80} are not a list literal "
                                            f"({exc.__class__.__name__})") from None
                answers = answers_of(value, where)
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
        text = record_field(rec, ("question",), where, "question")
        answers = answers_of(record_field(rec, ("answer",), where, "answer list", object), where)
        queries.append(Query(f"{id_prefix}{index}", text, answers))
    return queries






