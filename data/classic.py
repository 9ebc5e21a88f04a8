"""The classic test collections in the data directory -- Cranfield 1400, CACM and CLIMATE-FEVER --
read with ir_datasets' parsers from the local copies (nothing is downloaded).
"""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

from tqdm.auto import tqdm

from elasticdenser.data.formats import data_file
from elasticdenser.data.trec import check_qrels, load_trec_qrels
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError

__all__ = ["load_cranfield", "load_climate_fever", "load_cacm"]


CRANFIELD = "cranfield"


CLIMATE_FEVER_ZIP = "climate-fever/climate-fever.zip"


class _PlainFile:
    """``dlc`` interface over a local file, so ir_datasets' Cranfield parsers read our copy."""

    def __init__(self, path: Path):
        self._path = path

    def stream(self):
        return open(self._path, "rb")

    def path(self, force: bool = True) -> Path:
        return self._path


def load_cranfield(data_dir: Path) -> Collection:
    """Cranfield 1400, parsed by ir_datasets' Cranfield classes (SMART ``.I/.T/.A/.B/.W``).

    Query ids are 1..225 in file order (``cranqrel`` numbers them so, not by ``.I``; ir_datasets
    does the same). Grades: code 1..4 -> 5 - code (4 = complete answer); the 225 code ``-1``
    judgments, which the readme does not explain, are kept as grade 0 and counted in ``skipped``.
    """
    from ir_datasets.datasets.cranfield import (
        CranfieldDocs,
        CranfieldQrels,
        CranfieldQueries,
    )

    root = data_dir / CRANFIELD
    docs_file = data_file(data_dir, f"{CRANFIELD}/cran.all.1400")
    qry_file = data_file(data_dir, f"{CRANFIELD}/cran.qry")
    qrels_file = data_file(data_dir, f"{CRANFIELD}/cranqrel")
    # ``docs_iter`` is wrapped to prefer a docstore under $IR_DATASETS_HOME; call the parser itself.
    raw_docs = CranfieldDocs.docs_iter.__wrapped__(CranfieldDocs(_PlainFile(docs_file)))
    corpus = Corpus([Document(d.doc_id, d.title, d.text) for d in raw_docs], source=str(root))
    queries = [Query(q.query_id, " ".join(q.text.split())) for q in CranfieldQueries(_PlainFile(qry_file)).queries_iter()]
    qrels: Qrels = {}
    minus_one = 0
    try:
        judgments = list(CranfieldQrels(_PlainFile(qrels_file)).qrels_iter())
    except RuntimeError as exc:
        raise InvalidInputError(f"{qrels_file}: expected 'qid docid code' lines ({exc})") from None
    for j in judgments:
        if j.relevance == -1:
            grade, minus_one = 0, minus_one + 1
        elif 1 <= j.relevance <= 4:
            grade = 5 - j.relevance
        else:
            raise InvalidInputError(f"{qrels_file}: query {j.query_id} doc {j.doc_id}: code {j.relevance} is not 1-4 or -1")
        judged = qrels.setdefault(j.query_id, {})
        if j.doc_id in judged:
            raise InvalidInputError(f"{qrels_file}: query {j.query_id} doc {j.doc_id} is judged twice")
        judged[j.doc_id] = grade
    check_qrels(qrels, queries, corpus, str(qrels_file))
    coll = Collection("cranfield", corpus, [q for q in queries if q.query_id in qrels], qrels,
                      description="Cranfield 1400 (aeronautics abstracts), graded qrels 5 - code")
    coll.skipped["code -1 judgments kept as grade 0 (non-relevant)"] = minus_one
    if len(coll.queries) != len(queries):
        coll.skipped["queries without judgments"] = len(queries) - len(coll.queries)
    return coll


def load_climate_fever(data_dir: Path) -> Collection:
    """CLIMATE-FEVER as a re-ranking-like retrieval task over its candidate evidence sentences.

    Corpus = the distinct evidence sentences (id = ``evidence_id`` "Article:idx", title = article;
    an id seen twice must carry the same sentence). Queries = claims with at least one SUPPORTS or
    REFUTES evidence (grade 1); the others are counted in ``skipped``.
    """
    zip_path = data_file(data_dir, CLIMATE_FEVER_ZIP)
    docs: Dict[str, Document] = {}
    queries: List[Query] = []
    qrels: Qrels = {}
    unlabelled = 0
    with zipfile.ZipFile(zip_path) as archive:
        with archive.open("climate-fever.jsonl") as raw:
            for lineno, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):
                where = f"{zip_path}!climate-fever.jsonl:{lineno}"
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    qid, claim, evidences = str(rec["claim_id"]), rec["claim"], rec["evidences"]
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{where}: malformed JSON line ({exc.msg})") from None
                except KeyError as exc:
                    raise InvalidInputError(f"{where}: missing field {exc.args[0]!r}") from None
                positives = {}
                for k, ev in enumerate(evidences):
                    try:
                        doc = Document(ev["evidence_id"], ev["article"], ev["evidence"])
                        label = ev["evidence_label"]
                    except (KeyError, TypeError):
                        raise InvalidInputError(
                            f"{where}: evidences[{k}] needs evidence_id, article, evidence, evidence_label") from None
                    old = docs.setdefault(doc.doc_id, doc)
                    if old != doc:
                        raise InvalidInputError(f"{where}: evidence id {doc.doc_id!r} has two different sentences")
                    if label in ("SUPPORTS", "REFUTES"):
                        positives[doc.doc_id] = 1
                if positives:
                    queries.append(Query(qid, claim))
                    qrels[qid] = positives
                else:
                    unlabelled += 1
    coll = Collection("climate-fever", Corpus(list(docs.values()), source=str(zip_path)), queries, qrels,
                      description="CLIMATE-FEVER claims over their 5,240 candidate evidence sentences")
    coll.skipped["claims without SUPPORTS/REFUTES evidence (not evaluable)"] = unlabelled
    return coll


CACM = "cacm"


def load_cacm(data_dir: Path) -> Collection:
    """CACM: 3,204 abstracts (one ``<html><pre>`` file each), 64 topics, 796 binary judgments.

    Doc ids are ``CACM-<n>`` without zero padding, as in the qrels (files are ``CACM-0046.html``).
    Title = the first paragraph of the ``<pre>`` block; text = the rest (abstract when present,
    date, authors, ids, citation lines), whitespace-normalised, nothing removed. Topics are
    ``<DOC><DOCNO>`` blocks of bare text (no tag a TREC parser reads as content). Only the 52 judged
    topics are evaluation queries; the 12 others are counted in ``skipped``.
    """
    import html
    import re

    tar_path = data_file(data_dir, f"{CACM}/cacm.tar.gz")
    docs: List[Document] = []
    with tarfile.open(tar_path, "r:gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(".html")), key=lambda m: m.name)
        for member in tqdm(members, desc="cacm", disable=None, leave=False):
            raw = archive.extractfile(member).read().decode("utf-8", errors="strict")
            match = re.search(r"<pre>(.*)</pre>", raw, re.S | re.I)
            if not match:
                raise InvalidInputError(f"{tar_path}!{member.name}: expected <html><pre>...</pre>")
            blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", html.unescape(match.group(1)))]
            blocks = [b for b in blocks if b]
            if not blocks:
                raise InvalidInputError(f"{tar_path}!{member.name}: empty document")
            stem = Path(member.name).stem  # CACM-0046; the qrels write CACM-46, so ids drop the padding
            prefix, _, number = stem.partition("-")
            if not number.isdigit():
                raise InvalidInputError(f"{tar_path}!{member.name}: expected a name like CACM-0001.html")
            docs.append(Document(f"{prefix}-{int(number)}", blocks[0], " ".join(blocks[1:])))
    corpus = Corpus(docs, source=str(tar_path))
    topics_file = data_file(data_dir, f"{CACM}/topics.cacm.txt")
    content = topics_file.read_text(encoding="utf-8")
    # ir_datasets' TrecDocs/TrecQueries expect <TEXT>/<top> tags; these topics are bare text in <DOC>.
    topics = [Query(m.group(1), " ".join(m.group(2).split()))
              for m in re.finditer(r"<DOC>\s*<DOCNO>\s*(\S+)\s*</DOCNO>(.*?)</DOC>", content, re.S)]
    if len(topics) != content.count("<DOC>") or any(not q.text for q in topics):
        raise InvalidInputError(f"{topics_file}: expected <DOC><DOCNO> n </DOCNO> text </DOC> blocks with text")
    qrels = load_trec_qrels(data_file(data_dir, f"{CACM}/qrels.cacm.txt"))
    check_qrels(qrels, topics, corpus, str(data_dir / CACM / "qrels.cacm.txt"))
    coll = Collection("cacm", corpus, [q for q in topics if q.query_id in qrels], qrels,
                      description="CACM abstracts (1958-1979), 52 judged topics, binary qrels")
    coll.skipped["topics without judgments"] = len(topics) - len(coll.queries)
    return coll
