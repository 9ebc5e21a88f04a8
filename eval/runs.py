"""Query files and TREC run files.

Query files: ``.tsv``/``.txt`` (``qid<TAB>text`` per line) or ``.jsonl`` (``{"id"|"query_id"|"qid",
"text"|"query"|"question", optional "answers"}``). They must be UTF-8: other encodings are
refused with the line number of the first undecodable byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from elasticdenser.data.types import Query, check_id
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["read_queries", "write_trec_run"]


def read_queries(path: "str | Path") -> List[Query]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"query file {path} not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
    out: List[Query] = []
    is_json = path.suffix.lower() in (".jsonl", ".json")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if is_json:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            qid = rec.get("id", rec.get("query_id", rec.get("qid", lineno - 1)))
            qtext = rec.get("text", rec.get("query", rec.get("question")))
            if not isinstance(qtext, str):
                raise InvalidInputError(f"{path}:{lineno}: no query text (expected a 'text', 'query' or 'question' field)")
            answers = rec.get("answers", rec.get("answer", ()))
            qid = check_id(str(qid), f"{path}:{lineno}", "query id")
            out.append(Query(qid, qtext, tuple(answers) if isinstance(answers, list) else ((answers,) if answers else ())))
        else:
            qid, sep, qtext = line.partition("\t")
            if not sep:
                raise InvalidInputError(f"{path}:{lineno}: expected 'qid<TAB>query text'")
            out.append(Query(check_id(qid.strip(), f"{path}:{lineno}", "query id"), qtext))
    return out


def write_trec_run(run, path: "str | Path") -> Path:
    """Save a ranx Run as a TREC run file (``qid Q0 docid rank score tag``), atomically."""
    from elasticdenser.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        run.save(str(tmp), kind="trec")
    return path
