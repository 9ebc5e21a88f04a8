"""Named sample collections assembled from the real data in ``$ELASTICDENSER_DATA``.

Every collection here is built from files described in the data folder's README, with stable
ids, so experiments, indexes and reports can refer to documents and queries across runs.

Ids and deduplication (why they look the way they do):

* ``nq-sample`` joins three sources whose ids would collide, so doc ids carry the source:
  ``nqgold-<n>`` (n = position of the passage among the distinct gold passages, in file order;
  several questions share a gold passage, 2,655 questions -> 2,600 passages),
  ``wiki-<id>`` (FlashRAG's id in dpr-wiki-sample), ``dpr-<passage_id>`` (DPR psgs_w100 id).
  Identical (title, text) pairs *within* nq-gold are one document (that is how the qrels find
  the gold passage). DPR passages are keyed by their psgs_w100 id: two ids with the same text are
  two passages in DPR's corpus too, so both are kept (the sample's 751 ids carry 749 distinct
  texts). A passage from a later source whose (title, text) equals an earlier document's is
  merged into it (train positives follow) and counted in ``skipped`` (none in the shipped data:
  2,600 + 1,000 + 751 = 4,351).
  Query ids are the 0-based line index in ``nq-open-oracle.jsonl.gz``.
* ``squad-sample`` ids: ``squad-<article>-<paragraph>`` and SQuAD's own question ids.
* ``trec-dl`` / ``scifact`` keep the original MS MARCO / SciFact ids (qids are unique across
  TREC DL 2019 and 2020).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from tqdm.auto import tqdm

from elasticdenser.data.classic import load_cacm, load_climate_fever, load_cranfield
from elasticdenser.data.dpr import dpr_examples_to_collection, load_dpr_biencoder
from elasticdenser.data.formats import data_file, iter_jsonl, load_nq_open, load_qa_pairs, load_tsv_queries, open_text
from elasticdenser.data.leakage import check_leakage
from elasticdenser.data.local import load_squad
from elasticdenser.data.splits import load_nq_sample_test, load_squad_sample_test
from elasticdenser.data.trec import check_qrels, load_trec_qrels
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query
from elasticdenser.errors import InvalidInputError, StateError

__all__ = [
    "NQ_GOLD",
    "DPR_WIKI",
    "DPR_NQ_DEV",
    "NQ_OPEN_DEV",
    "DPR_NQ_TEST",
    "DPR_NQ_DEV_TOPICS",
    "DPR_TQA_DEV_TOPICS",
    "DPR_TQA_TEST_TOPICS",
    "SQUAD_DEV",
    "SCIFACT_ZIP",
    "SCIFACT_TOPICS",
    "SCIFACT_QRELS",
    "TREC_DL",
    "TREC_DL_RETRIEVERS",
    "TREC_DL_YEARS",
    "nq_test_questions",
    "load_nq_sample",
    "load_squad_sample",
    "load_scifact",
    "trec_dl_pool_files",
    "load_trec_dl_pools",
    "load_trec_dl",
    "SampleSpec",
]

log = logging.getLogger(__name__)

# File locations inside the data directory (README of the data folder).
NQ_GOLD = "nq-gold-passages/nq-open-oracle.jsonl.gz"
DPR_WIKI = "dpr-wiki-sample/sample_data.jsonl"
DPR_NQ_DEV = "dpr-nq-dev-sample/sample.json"
NQ_OPEN_DEV = "nq-open/NQ-open.dev.jsonl"
DPR_NQ_TEST = "dpr-qa-topics/topics.dpr.nq.test.txt"
DPR_NQ_DEV_TOPICS = "dpr-qa-topics/topics.dpr.nq.dev.txt"
DPR_TQA_DEV_TOPICS = "dpr-qa-topics/topics.dpr.trivia.dev.txt.gz"
DPR_TQA_TEST_TOPICS = "dpr-qa-topics/topics.dpr.trivia.test.txt.gz"
SQUAD_DEV = "squad-v1.1/dev-v1.1.json.gz"
SCIFACT_ZIP = "scifact/scifact.zip"
SCIFACT_TOPICS = "scifact/topics.beir-v1.0.0-scifact.test.tsv.gz"
SCIFACT_QRELS = "scifact/qrels.beir-v1.0.0-scifact.test.txt"
TREC_DL = "msmarco-passage-trec-dl"
TREC_DL_RETRIEVERS = ("BM25", "BM25_RM3", "D_BERT_KD_TASB", "OPEN_AI_ADA2", "SPLADE_P_P_ENSEMBLE_DISTIL")
TREC_DL_YEARS = {"dl19": ("topics.dl19-passage.txt", "qrels.dl19-passage.txt"),
                 "dl20": ("topics.dl20.txt", "qrels.dl20-passage.txt")}


# --------------------------------------------------------------------------- nq-sample

def nq_test_questions(data_dir: Path) -> List[str]:
    """All 3,610 NQ test questions (NQ-open dev, and DPR's tokenised copy of the same set)."""
    texts = [q.text for q in load_nq_open(data_file(data_dir, NQ_OPEN_DEV))]
    dpr = data_dir / DPR_NQ_TEST
    if dpr.is_file():
        texts += [q.text for q in load_qa_pairs(dpr)]
    return texts


def load_nq_sample(data_dir: Path) -> Collection:
    """NQ test questions with gold passages, plus DPR-style distractors (see module docstring)."""
    gold_path = data_file(data_dir, NQ_GOLD)
    docs: List[Document] = []
    by_content: Dict[Tuple[str, str], str] = {}
    queries: List[Query] = []
    qrels: Qrels = {}
    shared_gold = 0
    for index, (lineno, rec) in enumerate(iter_jsonl(gold_path, desc="nq gold")):
        where = f"{gold_path}:{lineno}"
        question = rec.get("question")
        answers = rec.get("answers")
        ctxs = rec.get("ctxs")
        if not isinstance(question, str) or not isinstance(answers, list) or not isinstance(ctxs, list) or len(ctxs) != 1:
            raise InvalidInputError(f"{where}: expected question (str), answers (list) and ctxs (exactly one passage)")
        ctx = ctxs[0]
        if not isinstance(ctx, dict) or not isinstance(ctx.get("title"), str) or not isinstance(ctx.get("text"), str):
            raise InvalidInputError(f"{where}: ctxs[0] must have string title and text")
        key = (ctx["title"], ctx["text"])
        doc_id = by_content.get(key)
        if doc_id is None:
            doc_id = f"nqgold-{len(docs)}"
            by_content[key] = doc_id
            docs.append(Document(doc_id, ctx["title"], ctx["text"]))
        else:
            shared_gold += 1
        qid = str(index)
        queries.append(Query(qid, question, tuple(dict.fromkeys(answers))))
        qrels[qid] = {doc_id: 1}

    skipped: Dict[str, int] = {}
    if shared_gold:
        skipped["gold passages repeated by a later question (one document, both qrels point to it)"] = shared_gold

    alias: Dict[str, str] = {}  # dropped duplicate id -> the kept document's id

    def add(doc: Document, source: str) -> None:
        key = (doc.title, doc.text)
        if key in by_content:
            reason = f"{source} passages identical to an earlier document (merged into it)"
            skipped[reason] = skipped.get(reason, 0) + 1
            alias[doc.doc_id] = by_content[key]
            return
        by_content[key] = doc.doc_id
        docs.append(doc)

    wiki_path = data_file(data_dir, DPR_WIKI)
    for lineno, rec in iter_jsonl(wiki_path, desc="dpr wiki sample"):
        where = f"{wiki_path}:{lineno}"
        if not isinstance(rec.get("id"), str) or not isinstance(rec.get("contents"), str) or "\n" not in rec["contents"]:
            raise InvalidInputError(f"{where}: expected id (str) and contents '\"Title\"\\ntext'")
        title, text = rec["contents"].split("\n", 1)
        add(Document(f"wiki-{rec['id']}", title.strip().strip('"'), text), "dpr-wiki-sample")

    examples = load_dpr_biencoder(data_file(data_dir, DPR_NQ_DEV), id_prefix="dpr-")
    dpr = dpr_examples_to_collection(examples, "dpr-nq-dev-sample", str(data_dir / DPR_NQ_DEV))
    known_dpr_ids = set()
    for doc in dpr.corpus:
        if doc.doc_id in known_dpr_ids:
            continue
        known_dpr_ids.add(doc.doc_id)
        # Same text under two DPR ids = two psgs_w100 passages: keep both (see module docstring).
        key = (doc.title, doc.text)
        if key in by_content and by_content[key].startswith("dpr-"):
            docs.append(doc)
            continue
        add(doc, "dpr-nq-dev-sample")
    for reason, count in dpr.skipped.items():
        skipped[f"dpr-nq-dev-sample: {reason}"] = count
    corpus = Corpus(docs, source=str(data_dir))

    # The 5 biencoder questions (DPR NQ dev = NQ train) with their positives, for training.
    train_queries = [Query(f"dpr-nq-dev-{q.query_id}", q.text, q.answers) for q in dpr.queries]
    train_positives = {f"dpr-nq-dev-{qid}": list(dict.fromkeys(alias.get(d, d) for d in docs_))
                       for qid, docs_ in dpr.qrels.items()}
    missing = [d for ids in train_positives.values() for d in ids if d not in corpus]
    if missing:  # cannot happen by construction; guards the alias bookkeeping above
        raise StateError(f"nq-sample: train positives {missing[:5]} are not in the corpus")
    coll = Collection(
        "nq-sample", corpus, queries, qrels,
        train_queries=train_queries, train_positives=train_positives,
        description="NQ test (NQ-open dev) questions with their gold passages, plus 1,000 DPR-wiki and "
                    "751 DPR NQ-dev passages as distractors; qrels = gold passage; answers for answer match",
        held_out_questions=nq_test_questions(data_dir),
        skipped=skipped,
    )
    check_leakage(coll.train_queries, [coll], pool_name="nq-sample train_queries")
    return coll


# --------------------------------------------------------------------------- squad-sample

def load_squad_sample(data_dir: Path) -> Collection:
    """SQuAD v1.1 dev: 2,067 paragraphs, 10,570 questions, qrels = the question's paragraph."""
    coll = load_squad(data_file(data_dir, SQUAD_DEV), name="squad-sample")
    dpr_copy = data_dir / "dpr-qa-topics/topics.dpr.squad.test.txt.gz"
    if dpr_copy.is_file():  # DPR's copy of the same questions: guard it too
        coll.held_out_questions = [q.text for q in load_qa_pairs(dpr_copy)]
    return coll


# --------------------------------------------------------------------------- scifact

def _numpy_list(raw: str, where: str, what: str = "abstract") -> List[str]:
    """Parse a numpy-printed list (``['s1'\n 's2' ...]`` or ``[ 5152028 11705328]``, no commas)
    with Python's tokenizer; items come back as strings.

    ``ast.literal_eval`` would concatenate adjacent string literals into one (losing sentence
    boundaries) and rejects comma-less numbers, so each token is read on its own.
    """
    import ast

    raw = raw.strip()
    if not (raw.startswith("[") and raw.endswith("]")):
        raise InvalidInputError(f"{where}: {what} must be a bracketed list, got {raw!r:.60}")
    items: List[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(raw).readline):
            if tok.type == tokenize.STRING:
                items.append(ast.literal_eval(tok.string))
            elif tok.type == tokenize.NUMBER:
                items.append(tok.string)
            elif tok.type not in (tokenize.OP, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT,
                                  tokenize.DEDENT):
                raise InvalidInputError(f"unexpected token {tok.string!r}")
    except (tokenize.TokenError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"{where}: cannot parse {what} list ({exc})") from None
    return items


def _csv_rows(archive: zipfile.ZipFile, member: str, zip_path: Path) -> List[Tuple[int, Dict[str, str]]]:
    with archive.open(member) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        return [(reader.line_num, row) for row in reader]


def load_scifact(data_dir: Path) -> Collection:
    """BEIR SciFact test (300 claims, 339 qrels over 5,183 abstracts) + the 809 train claims.

    Document text = the abstract's sentences joined by spaces; train positives = a claim's
    ``cited_doc_ids`` plus any ``evidence_doc_id`` (union over the claim's rows).
    """
    zip_path = data_file(data_dir, SCIFACT_ZIP)
    docs: List[Document] = []
    with zipfile.ZipFile(zip_path) as archive:
        for line, row in tqdm(_csv_rows(archive, "corpus_train.csv", zip_path), desc="scifact corpus", disable=None, leave=False):
            where = f"{zip_path}!corpus_train.csv:{line}"
            if not row.get("doc_id") or row.get("abstract") is None:
                raise InvalidInputError(f"{where}: missing doc_id or abstract")
            docs.append(Document(row["doc_id"], row.get("title") or "", " ".join(_numpy_list(row["abstract"], where))))
        train_rows = _csv_rows(archive, "claims_train.csv", zip_path)
    corpus = Corpus(docs, source=str(zip_path))
    queries = load_tsv_queries(data_file(data_dir, SCIFACT_TOPICS))
    qrels = load_trec_qrels(data_file(data_dir, SCIFACT_QRELS))
    check_qrels(qrels, queries, corpus, str(data_dir / SCIFACT_QRELS))

    train: Dict[str, Query] = {}
    positives: Dict[str, List[str]] = {}
    for line, row in train_rows:
        where = f"{zip_path}!claims_train.csv:{line}"
        if not row.get("id") or not row.get("claim"):
            raise InvalidInputError(f"{where}: missing id or claim")
        qid = f"train-{row['id']}"
        if qid in train and train[qid].text != row["claim"]:
            raise InvalidInputError(f"{where}: claim id {row['id']} repeated with a different text")
        train.setdefault(qid, Query(qid, row["claim"]))
        cited = _numpy_list(row.get("cited_doc_ids") or "[]", where, "cited_doc_ids")
        if row.get("evidence_doc_id"):
            cited.append(row["evidence_doc_id"])
        for doc_id in cited:
            if doc_id not in corpus:
                raise InvalidInputError(f"{where}: doc id {doc_id!r} is not in the SciFact corpus")
            if doc_id not in positives.setdefault(qid, []):
                positives[qid].append(doc_id)
    coll = Collection("scifact", corpus, [q for q in queries if q.query_id in qrels], qrels,
                      train_queries=list(train.values()), train_positives=positives,
                      description="BEIR SciFact test (nDCG@10), plus SciFact train claims with cited abstracts")
    unjudged = len(queries) - len(coll.queries)
    if unjudged:
        coll.skipped["test topics without qrels"] = unjudged
    # Two SciFact train claims repeat test claims word for word (train-871, train-1291): they are
    # removed from training, counted, and logged; evaluation keeps them.
    kept, dropped = check_leakage(coll.train_queries, [coll], drop_overlap=True, pool_name="scifact train claims")
    if dropped:
        coll.train_queries = kept
        for query, _ in dropped:
            coll.train_positives.pop(query.query_id, None)
        coll.skipped["train claims identical to a test claim (removed from training)"] = len(dropped)
    return coll


# --------------------------------------------------------------------------- trec-dl

def trec_dl_pool_files(data_dir: Path) -> Dict[str, Path]:
    """``{"<RETRIEVER>.<year>": path}`` for the ten candidate-pool files."""
    return {f"{r}.{year}": data_file(data_dir, f"{TREC_DL}/{r}.retrieve_results_{year}.json.gz")
            for year in TREC_DL_YEARS for r in TREC_DL_RETRIEVERS}


def load_trec_dl_pools(data_dir: Path) -> Tuple[Dict[str, Document], Dict[str, Dict[str, Dict[str, float]]]]:
    """Passages and first-stage runs from the rank_llm pool files.

    Returns (docs by id, runs ``{"<RETRIEVER>.<year>": {qid: {docid: score}}}``; ready for
    ``ranx.Run.from_dict``). A passage id seen with two different texts raises.
    """
    docs: Dict[str, Document] = {}
    runs: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, path in tqdm(trec_dl_pool_files(data_dir).items(), desc="trec-dl pools", disable=None, leave=False):
        with open_text(path) as handle:
            try:
                entries = json.load(handle)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        run: Dict[str, Dict[str, float]] = {}
        for e, entry in enumerate(entries):
            for h, hit in enumerate(entry.get("hits", [])):
                where = f"{path}: [{e}].hits[{h}]"
                try:
                    qid, did, text, score = str(hit["qid"]), str(hit["docid"]), hit["content"], float(hit["score"])
                except (KeyError, TypeError, ValueError):
                    raise InvalidInputError(f"{where}: expected qid, docid, content and numeric score") from None
                old = docs.get(did)
                if old is None:
                    docs[did] = Document(did, "", text)
                elif old.text != text:
                    raise InvalidInputError(f"{where}: passage {did} has a different text than in an earlier pool file")
                run.setdefault(qid, {})[did] = score
        runs[name] = run
    return docs, runs


def load_trec_dl(data_dir: Path) -> Collection:
    """TREC DL 2019 + 2020 passage: judged topics (43 + 54), graded qrels (0-3), corpus = the
    union of the candidate pools (24,884 passages). Judged passages missing from the pools stay in
    the qrels (they count against recall, as they should) and are reported in ``skipped``.
    """
    docs, _ = load_trec_dl_pools(data_dir)
    corpus = Corpus(sorted(docs.values(), key=lambda d: int(d.doc_id) if d.doc_id.isdigit() else d.doc_id),
                    source=str(data_dir / TREC_DL))
    queries: List[Query] = []
    qrels: Qrels = {}
    unjudged = 0
    for _year, (topics, qrels_file) in TREC_DL_YEARS.items():
        year_topics = load_tsv_queries(data_file(data_dir, f"{TREC_DL}/{topics}"))
        year_qrels = load_trec_qrels(data_file(data_dir, f"{TREC_DL}/{qrels_file}"))
        check_qrels(year_qrels, year_topics, None, str(data_dir / TREC_DL / qrels_file))
        for q in year_topics:
            if q.query_id in year_qrels:
                queries.append(q)
            else:
                unjudged += 1
        overlap = set(qrels) & set(year_qrels)
        if overlap:
            raise InvalidInputError(f"{qrels_file}: query ids {sorted(overlap)[:5]} are also judged in another year")
        qrels.update(year_qrels)
    missing = check_qrels(qrels, queries, corpus, str(data_dir / TREC_DL), allow_unknown_docs=True)
    coll = Collection("trec-dl", corpus, queries, qrels,
                      description="TREC DL 2019+2020 passage: judged topics, graded qrels, "
                                  "closed corpus = the 5 retrievers' top-100 pools")
    coll.skipped["topics without judgments (dl20 has 200 topics, 54 judged)"] = unjudged
    coll.skipped["judgments whose passage has no text in the pools (kept in qrels)"] = missing
    return coll


# --------------------------------------------------------------------------- cranfield / climate-fever


# --------------------------------------------------------------------------- query pool


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class SampleSpec:
    name: str
    loader: Callable[[Path], Collection]
    description: str


SAMPLES: Dict[str, SampleSpec] = {
    s.name: s
    for s in (
        SampleSpec("nq-sample", load_nq_sample,
                   "NQ test questions (2,655) over their gold passages + DPR distractors (4,351 passages)"),
        SampleSpec("squad-sample", load_squad_sample, "SQuAD v1.1 dev: 10,570 questions over 2,067 paragraphs"),
        SampleSpec("squad-sample-test", load_squad_sample_test, "squad-sample's odd articles to test, even articles to train"),
        SampleSpec("nq-sample-test", load_nq_sample_test,
                   "nq-sample split by Wikipedia article: half the questions to test, half to train"),
        SampleSpec("scifact", load_scifact, "BEIR SciFact test (300 claims, 5,183 abstracts) + 809 train claims"),
        SampleSpec("trec-dl", load_trec_dl, "TREC DL 2019+2020 passage: 97 judged topics, graded qrels, 24,884-passage pool"),
        SampleSpec("cacm", load_cacm, "CACM: 52 judged topics, binary qrels, 3,204 abstracts"),
        SampleSpec("cranfield", load_cranfield, "Cranfield 1400: 225 queries, graded qrels (5 - code), 1,400 abstracts"),
        SampleSpec("climate-fever", load_climate_fever,
                   "CLIMATE-FEVER: 1,061 claims with labelled evidence over 5,240 sentences"),
    )
}
