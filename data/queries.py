"""Training questions from a user's own files: query logs (TREC topics, jsonl, tsv, one query per
line) and Hugging Face ``datasets`` sources (a ``save_to_disk`` folder, parquet, jsonl), including
Tevatron-format training sets (``query``, ``positive_passages``, ``negative_passages``).

Distillation needs questions, not labels, so every reader returns :class:`Query` records; a
Tevatron set's positive passages come back as document ids beside them, for a trainer that can
map them onto its corpus. Text files are read by the data layer's own loaders (errors name the
file and the line); ``datasets`` reads the Arrow-backed formats it exists for (errors name the
file, the row and the field).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from elasticdenser.data.formats import QID_FIELDS, QTEXT_FIELDS, PathLike, load_jsonl_queries, open_text
from elasticdenser.data.types import Query, is_blank
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["QueryFile", "load_query_file", "load_query_lines", "load_hf_queries", "HF_SUFFIXES"]

#: suffixes read through ``datasets`` (a directory is a ``save_to_disk`` folder)
HF_SUFFIXES = (".parquet", ".arrow")


class QueryFile(list):
    """A ``list[Query]`` read from one source, with the positives a labelled source carried.

    ``positives``: ``{query_id: [doc_id, ...]}`` (Tevatron ``positive_passages``; empty otherwise).
    ``skipped``: counts by reason (e.g. repeated questions), so nothing vanishes silently.
    """

    def __init__(self, queries: Sequence[Query] = (), source: str = "", positives: Optional[Dict[str, List[str]]] = None,
                 skipped: Optional[Dict[str, int]] = None):
        super().__init__(queries)
        self.source = source
        self.positives: Dict[str, List[str]] = dict(positives or {})
        self.skipped: Dict[str, int] = dict(skipped or {})


def load_query_lines(path: PathLike, *, id_prefix: str = "") -> List[Query]:
    """A plain query log: one query per non-blank line; ids are ``<prefix><line number>``."""
    queries = []
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                queries.append(Query(f"{id_prefix}{lineno}", line.strip()))
    return queries


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def load_query_file(path: PathLike, *, id_prefix: str = "", via_datasets: bool = False) -> QueryFile:
    """Questions from one file or folder, its format told by its name (then by its first line).

    ``.jsonl``/``.json`` -> JSON lines (``_id``/``id``/``query_id`` and ``text``/``query``/``question``);
    ``.tsv`` -> ``qid<TAB>text``; ``.txt`` -> one query per line; TREC SGML topics (``<top>``) by
    content; ``.parquet``/``.arrow`` or a folder -> ``datasets``. ``via_datasets`` reads jsonl
    through ``datasets`` too (how a Hub-style jsonl training set is usually shipped).
    """
    from elasticdenser.data.trec import load_trec_topics

    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"query file {path}: no such file or directory")
    suffix = _suffix(path)
    if path.is_dir() or suffix in HF_SUFFIXES or via_datasets:
        return load_hf_queries(path, id_prefix=id_prefix)
    if suffix in (".jsonl", ".json"):
        with open_text(path) as handle:
            head = handle.read(65536)
        if '"positive_passages"' in head:  # a Tevatron training set as plain jsonl
            return load_hf_queries(path, id_prefix=id_prefix)
        queries = load_jsonl_queries(path, id_prefix=id_prefix)
    elif suffix == ".tsv":
        queries = load_trec_topics(path, id_prefix=id_prefix)  # tsv, or SGML topics named .tsv
    elif suffix == ".txt":
        queries = load_query_lines(path, id_prefix=id_prefix)
    else:
        with open_text(path) as handle:
            first = next((line for line in handle if line.strip()), "")
        if "<top>" in first.lower():
            queries = load_trec_topics(path, id_prefix=id_prefix)
        elif first.lstrip().startswith("{"):
            queries = load_jsonl_queries(path, id_prefix=id_prefix)
        elif "\t" in first:
            queries = load_trec_topics(path, id_prefix=id_prefix)
        else:
            queries = load_query_lines(path, id_prefix=id_prefix)
    if not queries:
        raise InvalidInputError(f"query file {path}: no queries")
    return QueryFile(queries, str(path))


def _open_dataset(path: Path):
    """One split of a ``datasets`` source: ``load_from_disk`` for folders, ``load_dataset`` for files."""
    import datasets

    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise InvalidInputError(f"{path}: not a datasets save_to_disk folder ({exc})") from None
    else:
        builder = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(_suffix(path))
        if builder is None:
            raise InvalidInputError(f"{path}: datasets reads .parquet, .arrow, .jsonl, .json or .csv here")
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps parser errors in its own types
            raise InvalidInputError(f"{path}: datasets could not read it as {builder}: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            return ds["train"]
        if len(ds) != 1:
            raise InvalidInputError(f"{path}: a DatasetDict with splits {sorted(ds)}; expected 'train' or a single split")
        return next(iter(ds.values()))
    return ds


def _field(record: Dict[str, Any], names: Sequence[str]) -> Tuple[Optional[str], Any]:
    for name in names:
        if name in record and record[name] is not None:
            return name, record[name]
    return None, None


def load_hf_queries(path: PathLike, *, id_prefix: str = "") -> QueryFile:
    """Questions of a ``datasets`` source; Tevatron rows also give ``positive_passages`` doc ids.

    Text and id fields as in the jsonl reader (``text``/``query``/``question``; ``_id``/``id``/
    ``query_id``/``qid``, else the row number). An empty question or id, or a repeated id, raises,
    naming the row.
    """
    path = Path(path).expanduser()
    ds = _open_dataset(path)
    columns = set(ds.column_names)
    # the same field order as the jsonl reader (formats.QTEXT_FIELDS / QID_FIELDS): one file, one reading
    text_names = [n for n in QTEXT_FIELDS if n in columns]
    if not text_names:
        raise InvalidInputError(f"{path}: no question column: expected one of {list(QTEXT_FIELDS)}; found {sorted(columns)}")
    id_names = [n for n in QID_FIELDS if n in columns]
    tevatron = "positive_passages" in columns
    ds = ds.select_columns(text_names + id_names + (["positive_passages"] if tevatron else []))  # negatives unread
    queries: List[Query] = []
    positives: Dict[str, List[str]] = {}
    seen: Dict[str, int] = {}
    for row, record in enumerate(ds):
        where = f"{path}: row {row}"
        _, text = _field(record, text_names)
        if not isinstance(text, str) or is_blank(text):
            raise InvalidInputError(f"{where}: field {text_names[0]!r} (question) is empty or not text: {text!r:.60}")
        id_name, qid = _field(record, id_names)
        if id_name is not None and not str(qid).strip():
            raise InvalidInputError(f"{where}: field {id_name!r} (query id) is empty")
        qid = f"{id_prefix}{row if id_name is None else qid}"
        if qid in seen:
            raise InvalidInputError(f"{where}: duplicate query id {qid!r} (first at row {seen[qid]})")
        seen[qid] = row
        queries.append(Query(qid, text.strip()))
        if tevatron:
            passages = record.get("positive_passages") or []
            if not isinstance(passages, list):
                raise InvalidInputError(f"{where}: field 'positive_passages' must be a list of passages")
            ids = []
            for k, passage in enumerate(passages):
                docid = passage.get("docid", passage.get("doc_id")) if isinstance(passage, dict) else None
                if docid is None or not str(docid).strip():
                    raise InvalidInputError(f"{where}: positive_passages[{k}] has no 'docid'")
                ids.append(str(docid))
            if ids:
                positives[qid] = ids
    if not queries:
        raise InvalidInputError(f"{path}: no queries")
    return QueryFile(queries, str(path), positives)
