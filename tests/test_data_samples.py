"""Named sample collections, the query pool and the leakage guard, on the real files."""
from __future__ import annotations

import time
import unicodedata

import pytest

from elasticdenser.data import (
    Collection,
    LeakageError,
    Query,
    check_leakage,
    load_collection,
    load_nq_open,
    load_qa_pairs,
    load_query_pool,
    normalize_question,
    resolve_data_dir,
)
from elasticdenser.data.samples import load_trec_dl_pools


def _has_answer(text: str, answers) -> bool:
    norm = lambda s: " ".join(unicodedata.normalize("NFKC", s).lower().split())
    return any(norm(a) in norm(text) for a in answers)


@pytest.fixture(scope="module")
def nq(data_dir) -> Collection:
    return load_collection("nq-sample", data_dir)


@pytest.fixture(scope="module")
def squad(data_dir) -> Collection:
    return load_collection("squad-sample", data_dir)


# ------------------------------------------------------------------ data dir


def test_resolve_data_dir(data_dir, monkeypatch, tmp_path):
    assert resolve_data_dir(data_dir) == data_dir
    monkeypatch.setenv("ELASTICDENSER_DATA", str(data_dir))
    assert resolve_data_dir() == data_dir
    monkeypatch.delenv("ELASTICDENSER_DATA")
    with pytest.raises(FileNotFoundError, match="ELASTICDENSER_DATA"):
        resolve_data_dir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nq-gold-passages"):
        load_collection("nq-sample", tmp_path)  # a folder without the data names the missing file
    with pytest.raises(ValueError, match="unknown collection 'no-such'"):
        load_collection("no-such", data_dir)


# ------------------------------------------------------------------ nq-sample


def test_nq_sample_counts_ids_and_qrels(nq):
    assert (len(nq.corpus), len(nq.queries)) == (4351, 2655)
    prefixes = {}
    for doc_id in nq.corpus.doc_ids():
        prefixes[doc_id.split("-", 1)[0]] = prefixes.get(doc_id.split("-", 1)[0], 0) + 1
    assert prefixes == {"nqgold": 2600, "wiki": 1000, "dpr": 751}
    assert [q.query_id for q in nq.queries] == [str(i) for i in range(2655)]
    first = nq.queries[0]
    assert first.text == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert nq.qrels["0"] == {"nqgold-0": 1}
    assert sum(len(v) for v in nq.qrels.values()) == 2655 and set(nq.qrels) == {q.query_id for q in nq.queries}
    # README: for every question the answer string appears in its gold passage
    for q in nq.queries:
        (doc_id,) = nq.qrels[q.query_id]
        assert _has_answer(nq.corpus.get(doc_id).text, q.answers), q
    # questions sharing a gold passage point at the same document (2,655 questions -> 2,600 passages)
    assert len({d for v in nq.qrels.values() for d in v}) == 2600
    # merged duplicates are reported, not hidden: 55 questions reuse an earlier question's gold
    # passage, and 4 DPR ctx entries repeat a passage id already listed
    assert nq.skipped == {
        "gold passages repeated by a later question (one document, both qrels point to it)": 55,
        "dpr-nq-dev-sample: ctx entries repeating an already listed passage id (one corpus entry each)": 4,
    }


def test_nq_sample_documents_and_random_access(nq):
    wiki = nq.corpus.get("wiki-0")
    assert wiki.title == "Evan Morris" and wiki.text.startswith("Evan Morris Evan L. Morris")
    assert wiki.contents == "Evan Morris " + wiki.text
    dpr = nq.corpus.get("dpr-11828866")  # gold positive of the first DPR NQ-dev record
    assert "Linda Davis" in dpr.text
    assert nq.corpus[0].doc_id == "nqgold-0" and nq.corpus[len(nq.corpus) - 1].doc_id.startswith("dpr-")
    assert "wiki-999" in nq.corpus and "wiki-1000" not in nq.corpus
    with pytest.raises(KeyError, match="unknown doc id"):
        nq.corpus.get("nqgold-999999")


def test_nq_sample_train_and_held_out(nq, data_dir):
    assert len(nq.train_queries) == 5
    for q in nq.train_queries:
        positives = nq.train_positives[q.query_id]
        assert positives and all(p in nq.corpus for p in positives)
    # the whole NQ test (3,610, two tokenisations) is held out, not only the 2,655 with gold passages
    assert nq.summary()["held_out_questions"] == 3610
    summary = nq.summary()
    assert {k: summary[k] for k in ("documents", "queries", "queries_with_answers", "qrels", "judged_queries",
                                    "train_queries")} \
        == {"documents": 4351, "queries": 2655, "queries_with_answers": 2655, "qrels": 2655, "judged_queries": 2655,
            "train_queries": 5}


def test_nq_sample_is_stable_and_fast(nq, data_dir):
    start = time.perf_counter()
    again = load_collection("nq-sample", data_dir)
    assert time.perf_counter() - start < 3.0
    assert again.corpus.doc_ids() == nq.corpus.doc_ids()
    assert again.qrels == nq.qrels and again.queries == nq.queries


# ------------------------------------------------------------------ squad / scifact / trec-dl


def test_squad_sample(squad):
    assert (len(squad.corpus), len(squad.queries)) == (2067, 10570)
    assert squad.corpus[0].doc_id == "squad-0-0" and squad.corpus[0].title == "Super Bowl 50"
    q = squad.queries[0]
    assert (q.query_id, q.text) == ("56be4db0acb8001400a502ec", "Which NFL team represented the AFC at Super Bowl 50?")
    assert q.answers == ("Denver Broncos",)
    assert squad.qrels[q.query_id] == {"squad-0-0": 1}
    assert len({q.query_id for q in squad.queries}) == 10570
    # SQuAD answers are spans of the question's own paragraph: every qrel must point there
    for query in squad.queries:
        (doc_id,) = squad.qrels[query.query_id]
        assert _has_answer(squad.corpus.get(doc_id).text, query.answers), query
    assert len({d for v in squad.qrels.values() for d in v}) == 2067


def test_scifact(data_dir):
    sf = load_collection("scifact", data_dir)
    assert (len(sf.corpus), len(sf.queries), sum(map(len, sf.qrels.values()))) == (5183, 300, 339)
    doc = sf.corpus.get("4983")
    # numpy-style sentence lists are split per sentence and joined with spaces (not glued together)
    assert doc.text.startswith("Alterations of the architecture of cerebral white matter")
    assert "functional disabilities. A line scan diffusion-weighted" in doc.text
    assert all(d in sf.corpus for v in sf.qrels.values() for d in v)
    assert {q.query_id: q.text for q in sf.queries}["1"] == "0-dimensional biomaterials show inductive properties."
    # 809 train claims, 2 of which repeat test claims: removed from training and reported
    assert len(sf.train_queries) == 807
    assert sf.skipped == {"train claims identical to a test claim (removed from training)": 2}
    assert sf.train_positives["train-0"] == ["31715818"]
    assert sf.train_positives["train-2"] == ["13734012"]
    assert all(d in sf.corpus for v in sf.train_positives.values() for d in v)
    test_keys = {normalize_question(q.text) for q in sf.queries}
    assert not any(normalize_question(q.text) in test_keys for q in sf.train_queries)


def test_trec_dl(data_dir):
    dl = load_collection("trec-dl", data_dir)
    assert (len(dl.corpus), len(dl.queries)) == (24884, 97)
    assert sum(map(len, dl.qrels.values())) == 9260 + 11386
    assert {g for v in dl.qrels.values() for g in v.values()} == {0, 1, 2, 3}
    assert set(dl.qrels) == {q.query_id for q in dl.queries}
    assert dl.skipped["topics without judgments (dl20 has 200 topics, 54 judged)"] == 146
    missing = sum(1 for v in dl.qrels.values() for d in v if d not in dl.corpus)
    assert dl.skipped["judgments whose passage has no text in the pools (kept in qrels)"] == missing > 0
    _, runs = load_trec_dl_pools(data_dir)
    assert len(runs) == 10
    assert {len(r) for name, r in runs.items() if name.endswith("dl19")} == {43}
    assert all(len(hits) == 100 for r in runs.values() for hits in r.values())


# ------------------------------------------------------------------ query pool and leakage guard


def test_normalize_question_sees_through_dpr_tokenisation(data_dir):
    assert (normalize_question("who sings i do n't want to be lonely")
            == normalize_question("Who sings I don't want to be lonely?"))
    assert normalize_question("Röntgen") == normalize_question("rontgen")
    assert normalize_question("who won") != normalize_question("who lost")
    # NQ-open dev and DPR's NQ test are the same 3,610 questions once normalised
    nq_open = {normalize_question(q.text) for q in load_nq_open(data_dir / "nq-open/NQ-open.dev.jsonl")}
    dpr = {normalize_question(q.text) for q in load_qa_pairs(data_dir / "dpr-qa-topics/topics.dpr.nq.test.txt")}
    assert nq_open == dpr and len(nq_open) == 3610


def test_query_pool_excludes_nq_test(data_dir, nq):
    pool = load_query_pool(data_dir=data_dir, exclude=[nq])
    assert len(pool) == 17584 and isinstance(pool, list) and all(isinstance(q, Query) for q in pool)
    assert sum(q.query_id.startswith("nq-dev-") for q in pool) + sum(q.query_id.startswith("tqa-dev-") for q in pool) == len(pool)
    nq_test = {normalize_question(q.text) for q in load_nq_open(data_dir / "nq-open/NQ-open.dev.jsonl")}
    assert not any(normalize_question(q.text) in nq_test for q in pool)
    # DPR's NQ dev repeats two NQ test questions up to tokenisation: removed, listed and counted
    assert sorted(q.query_id for q, _ in pool.dropped) == ["nq-dev-5245", "nq-dev-6680"]
    assert pool.skipped == {"repeated questions (same normalised text) kept once": 8,
                            "NQ test questions removed (always)": 2}
    assert len({normalize_question(q.text) for q in pool}) == len(pool)


def test_query_pool_leakage_error_and_explicit_drop(data_dir, squad):
    with pytest.raises(LeakageError, match=r"1 question\(s\).*squad-sample.*Roman numeral for 50"):
        load_query_pool(data_dir=data_dir, exclude=[squad])
    pool = load_query_pool(data_dir=data_dir, exclude=[squad], drop_overlap=True)
    assert len(pool) == 17583
    assert [(q.text, owner) for q, owner in pool.dropped if owner == "squad-sample"] \
        == [("What is the Roman numeral for 50?", "squad-sample")]
    assert pool.skipped["evaluation questions of excluded collections removed (drop_overlap)"] == 1


def test_leakage_guard_catches_reworded_eval_question(nq, squad):
    pool = [Query("a", "completely new question"), Query("b", "WHO got the first Nobel prize in physics?")]
    with pytest.raises(LeakageError, match="nq-sample"):
        check_leakage(pool, [nq, squad])
    kept, dropped = check_leakage(pool, [nq], drop_overlap=True)
    assert [q.query_id for q in kept] == ["a"] and [(q.query_id, o) for q, o in dropped] == [("b", "nq-sample")]
    # a held-out NQ test question that is not among nq-sample's 2,655 is guarded too
    held_only = {normalize_question(t) for t in nq.held_out_questions} - {normalize_question(q.text) for q in nq.queries}
    assert len(held_only) == 3610 - 2655
    text = next(t for t in nq.held_out_questions if normalize_question(t) in held_only)
    with pytest.raises(LeakageError):
        check_leakage([Query("c", text)], [nq])


def test_cacm_cranfield_and_climate_fever(data_dir):
    cacm = load_collection("cacm", data_dir)
    assert (len(cacm.corpus), len(cacm.queries), sum(map(len, cacm.qrels.values()))) == (3204, 52, 796)
    assert cacm.queries[0].text.startswith("What articles exist which deal with TSS")
    assert cacm.corpus.get("CACM-1410").title == "Interarrival Statistics for Time Sharing Systems"  # file CACM-1410.html
    assert cacm.corpus.get("CACM-46").doc_id == "CACM-46"  # CACM-0046.html, written CACM-46 in the qrels
    assert cacm.skipped == {"topics without judgments": 12}
    cran = load_collection("cranfield", data_dir)
    assert (len(cran.corpus), len(cran.queries), sum(map(len, cran.qrels.values()))) == (1400, 225, 1837)
    # queries are numbered 1..225 in file order (cran.qry's .I numbers skip), as cranqrel numbers them
    assert cran.queries[2].query_id == "3" and cran.queries[2].text.startswith(
        "what problems of heat conduction in composite slabs")
    assert cran.qrels["1"]["184"] == 3 and cran.qrels["1"]["12"] == 2  # grade = 5 - code
    assert cran.corpus.get("1").title.startswith("experimental investigation of the aerodynamics")
    assert cran.skipped == {"code -1 judgments kept as grade 0 (non-relevant)": 225}
    cf = load_collection("climate-fever", data_dir)
    assert (len(cf.corpus), len(cf.queries), sum(map(len, cf.qrels.values()))) == (5240, 1061, 1943 + 802)
    assert cf.skipped == {"claims without SUPPORTS/REFUTES evidence (not evaluable)": 474}
    assert cf.qrels["0"] == {"Global warming:14": 1, "Habitat destruction:61": 1}  # SUPPORTS/REFUTES only
    assert cf.corpus.get("Global warming:14").title == "Global warming"


@pytest.mark.parametrize("name,base", [("squad-sample-test", "squad-sample"), ("nq-sample-test", "nq-sample")])
def test_article_splits_keep_every_question_once_and_no_article_on_both_sides(data_dir, name, base):
    split, full = load_collection(name, data_dir), load_collection(base, data_dir)
    test_ids = {q.query_id for q in split.queries}
    train = [q for q in split.train_queries if q.query_id not in {t.query_id for t in full.train_queries}]
    assert test_ids.isdisjoint(q.query_id for q in train)
    assert test_ids | {q.query_id for q in train} == {q.query_id for q in full.queries}
    assert 0.35 < len(test_ids) / len(full.queries) < 0.65
    assert set(split.qrels) == test_ids
    title = {d.doc_id: d.title for d in full.corpus}
    side = {}
    for q in full.queries:
        for doc in full.qrels[q.query_id]:
            side.setdefault(title[doc], set()).add(q.query_id in test_ids)
    assert all(len(s) == 1 for s in side.values())  # an article's questions all on one side
    assert all(split.train_positives[q.query_id] == list(full.qrels[q.query_id]) for q in train)
    kept, dropped = check_leakage(split.train_queries, [split], drop_overlap=True)
    assert len(kept) == len(split.train_queries) and not dropped
    with pytest.raises(LeakageError):
        check_leakage(split.queries[:3], [split])
