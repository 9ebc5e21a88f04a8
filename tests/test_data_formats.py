"""Local-format loaders on the real files, export round trips, and bad-input errors."""
from __future__ import annotations

import gzip
import json
import shutil

import pytest

from elasticdenser.data import (
    Corpus,
    Document,
    dpr_examples_to_collection,
    load_beir_folder,
    load_collection,
    load_dpr_biencoder,
    load_jsonl_corpus,
    load_jsonl_queries,
    load_local,
    load_nq_open,
    load_qa_pairs,
    load_squad,
    load_trec_qrels,
    load_trec_run,
    load_trec_topics,
    load_tsv_corpus,
    load_tsv_queries,
)
from elasticdenser.data.export import export_collection


@pytest.fixture(scope="module")
def nq(data_dir):
    return load_collection("nq-sample", data_dir)


# ------------------------------------------------------------------ QA lists and NQ-open


def test_qa_pairs_python_list_files(data_dir):
    nq_test = load_qa_pairs(data_dir / "dpr-qa-topics/topics.dpr.nq.test.txt", id_prefix="nq-test-")
    assert len(nq_test) == 3610 and nq_test[0].query_id == "nq-test-0"
    assert all(q.answers for q in nq_test)
    detok = load_qa_pairs(data_dir / "dpr-qa-topics/topics.nq.dev.txt")
    assert len(detok) == 8757 and detok[-1].query_id == "8756"
    tqa = load_qa_pairs(data_dir / "dpr-qa-topics/topics.dpr.trivia.dev.txt.gz")
    assert len(tqa) == 8837
    assert tqa[0].text == "The VS-300 was a type of what?" and "Helicopter" in tqa[0].answers
    # line 3334 is CSV-quoted (as DPR writes fields holding quotes): parsed as DPR's csv reader does
    assert any("Macbeth" in a for a in tqa[3333].answers) and "Birnam Wood" in tqa[3333].text


def test_qa_pairs_json_lines_and_nq_open(data_dir):
    squad = load_qa_pairs(data_dir / "dpr-qa-topics/topics.dpr.squad.test.txt.gz")
    assert len(squad) == 10570 and squad[0].answers == ("Denver Broncos",)
    wq = load_qa_pairs(data_dir / "dpr-qa-topics/topics.dpr.wq.test.txt")
    assert len(wq) == 2032 and wq[0].text == "what does jamaican people speak?"
    dev = load_nq_open(data_dir / "nq-open/NQ-open.dev.jsonl")
    assert len(dev) == 3610 and dev[0].answers == ("14 December 1972 UTC", "December 1972")
    assert len(load_nq_open(data_dir / "nq-open/NQ-open.efficientqa.dev.1.1.jsonl")) == 1800
    assert len(load_nq_open(data_dir / "nq-open/NQ-open.efficientqa.test.1.1.jsonl")) == 1769


# ------------------------------------------------------------------ DPR biencoder


def test_dpr_biencoder_real_sample(data_dir):
    examples = load_dpr_biencoder(data_dir / "dpr-nq-dev-sample/sample.json")
    assert len(examples) == 5
    assert examples[0].query.text == "who sings does he love me with reba"
    assert examples[0].query.answers == ("Linda Davis",)
    assert examples[0].positives[0].doc_id == "11828866"
    assert all(1 <= len(e.positives) <= 7 and len(e.negatives) == 50 and 94 <= len(e.hard_negatives) <= 100 for e in examples)
    assert sum(len(e.positives) + len(e.negatives) + len(e.hard_negatives) for e in examples) == 755
    coll = dpr_examples_to_collection(examples, "dpr", "sample.json")
    assert len(coll.corpus) == 751 and len(coll.queries) == 5
    assert coll.train_positives["0"] == list(dict.fromkeys(d.doc_id for d in examples[0].positives))  # record 0 lists one twice
    assert coll.qrels["0"] == {d: 1 for d in coll.train_positives["0"]}
    assert load_local(data_dir / "dpr-nq-dev-sample/sample.json").summary()["documents"] == 751


# ------------------------------------------------------------------ TREC


def test_trec_topics_qrels_and_runs(data_dir, tmp_path):
    topics = load_trec_topics(data_dir / "msmarco-passage-trec-dl/topics.dl20.txt")
    assert len(topics) == 200 and topics[0].query_id == "1030303" and topics[0].text == "who is aziz hashim"
    qrels = load_trec_qrels(data_dir / "msmarco-passage-trec-dl/qrels.dl19-passage.txt")
    assert len(qrels) == 43 and sum(map(len, qrels.values())) == 9260
    assert qrels["19335"]["1017759"] == 0
    scifact_q = load_tsv_queries(data_dir / "scifact/topics.beir-v1.0.0-scifact.test.tsv.gz")
    assert len(scifact_q) == 300
    assert sum(map(len, load_trec_qrels(data_dir / "scifact/qrels.beir-v1.0.0-scifact.test.txt").values())) == 339
    # a real first-stage run: the BM25 dl19 pool written as a TREC run, read back through ranx
    entries = json.load(gzip.open(data_dir / "msmarco-passage-trec-dl/BM25.retrieve_results_dl19.json.gz", "rt"))
    run_file = tmp_path / "bm25.run"
    with open(run_file, "w") as handle:
        for entry in entries:
            for hit in entry["hits"]:
                handle.write(f"{hit['qid']} Q0 {hit['docid']} {hit['rank']} {hit['score']} bm25\n")
    run = load_trec_run(run_file)
    assert len(run) == 43 and all(len(v) == 100 for v in run.values())
    first = entries[0]["hits"][0]
    assert run[str(first["qid"])][first["docid"]] == pytest.approx(first["score"])
    lines = run_file.read_text().splitlines(keepends=True)
    (tmp_path / "bad.run").write_text("".join(lines[:7] + ["19335 Q0 123 8\n"] + lines[7:9]))
    with pytest.raises(ValueError, match=r"bad\.run:8: expected 'qid Q0 docid rank score tag'"):
        load_trec_run(tmp_path / "bad.run")


def test_trec_topics_sgml(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("<top>\n<num> Number: 301\n<title> International Organized Crime\n"
                    "<desc> Description:\nfind it\n<narr> Narrative:\nx\n</top>\n")
    (q,) = load_trec_topics(path)
    assert (q.query_id, q.text) == ("301", "International Organized Crime")


# ------------------------------------------------------------------ SQuAD, BEIR folders, generic jsonl/tsv, export


def test_squad_loader_via_local_path(data_dir):
    coll = load_local(data_dir / "squad-v1.1/dev-v1.1.json.gz", name="squad")
    assert coll.summary()["documents"] == 2067 and coll.summary()["queries"] == 10570


def test_beir_export_round_trip(nq, tmp_path):
    written = export_collection(nq, tmp_path / "beir", "beir")
    assert written == {"corpus.jsonl": 4351, "queries.jsonl": 2660, "qrels/test.tsv": 2655, "qrels/train.tsv": 18}
    back = load_beir_folder(tmp_path / "beir", name="nq-sample")
    assert back.corpus.doc_ids() == nq.corpus.doc_ids()
    assert [d for d in back.corpus] == [d for d in nq.corpus]
    assert back.queries == nq.queries and back.qrels == nq.qrels
    assert back.train_positives == nq.train_positives
    assert load_collection(str(tmp_path / "beir")).summary()["documents"] == 4351


def test_jsonl_export_and_generic_loaders(nq, tmp_path):
    export_collection(nq, tmp_path / "j", "jsonl")
    corpus = load_jsonl_corpus(tmp_path / "j/corpus.jsonl")
    assert corpus.doc_ids() == nq.corpus.doc_ids()
    queries = load_jsonl_queries(tmp_path / "j/queries.jsonl")
    assert queries == nq.queries
    assert load_trec_qrels(tmp_path / "j/qrels.trec") == nq.qrels
    # DPR psgs_w100 TSV layout (id, text, title; header) from real passages
    tsv = tmp_path / "psgs.tsv"
    docs = [d for d in nq.corpus if d.doc_id.startswith("dpr-")][:50]
    tsv.write_text("id\ttext\ttitle\n" + "".join(f"{d.doc_id[4:]}\t{d.text}\t{d.title}\n" for d in docs))
    loaded = load_tsv_corpus(tsv, id_prefix="dpr-")
    assert list(loaded) == docs


def test_real_wiki_sample_as_generic_jsonl(data_dir):
    corpus = load_jsonl_corpus(data_dir / "dpr-wiki-sample/sample_data.jsonl")
    assert len(corpus) == 1000 and corpus.get("0").text.startswith('"Evan Morris"\nEvan Morris')


# ------------------------------------------------------------------ bad input


def _copy_lines(src, dst, n, mutate=None):
    with open(src, encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(n)]
    if mutate:
        lines = mutate(lines)
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def test_bad_jsonl_lines(data_dir, tmp_path):
    wiki = data_dir / "dpr-wiki-sample/sample_data.jsonl"
    bad = _copy_lines(wiki, tmp_path / "bad.jsonl", 5, lambda ls: ls[:3] + [ls[3][:40] + "\n"] + ls[4:])
    with pytest.raises(ValueError, match=r"bad\.jsonl:4: malformed JSON line"):
        load_jsonl_corpus(bad)
    missing = _copy_lines(wiki, tmp_path / "missing.jsonl", 3,
                          lambda ls: ls[:2] + [json.dumps({"id": "2", "title": "x"}) + "\n"])
    with pytest.raises(ValueError,
                       match=r"missing\.jsonl:3: missing field for document text: expected one of \['text', 'contents'"):
        load_jsonl_corpus(missing)
    dup = _copy_lines(wiki, tmp_path / "dup.jsonl", 4, lambda ls: ls + [ls[1]])
    with pytest.raises(ValueError, match=r"dup\.jsonl:5: duplicate doc id '1' \(first on line 2\)"):
        load_jsonl_corpus(dup)
    nq_open = _copy_lines(data_dir / "nq-open/NQ-open.dev.jsonl", tmp_path / "nq.jsonl", 3,
                          lambda ls: ls[:1] + [json.dumps({"question": "q only"}) + "\n"] + ls[2:])
    with pytest.raises(ValueError, match=r"nq\.jsonl:2: missing field for answer list: expected one of \['answer'\]"):
        load_nq_open(nq_open)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl_corpus(tmp_path / "nope.jsonl")


def test_bad_qa_pairs_and_qrels(data_dir, tmp_path):
    qa = _copy_lines(data_dir / "dpr-qa-topics/topics.dpr.nq.test.txt", tmp_path / "qa.txt", 4,
                     lambda ls: ls[:2] + ["who is it\t['unterminated\n"] + ls[3:])
    with pytest.raises(ValueError, match=r"qa\.txt:3: answers .* are not a list literal"):
        load_qa_pairs(qa)
    cols = _copy_lines(data_dir / "dpr-qa-topics/topics.dpr.nq.test.txt", tmp_path / "cols.txt", 2,
                       lambda ls: ls[:1] + ["no answers here\n"])
    with pytest.raises(ValueError, match=r"cols\.txt:2: expected 'question<TAB>\[answers\]'"):
        load_qa_pairs(cols)
    qrels = _copy_lines(data_dir / "msmarco-passage-trec-dl/qrels.dl19-passage.txt", tmp_path / "q.txt", 6,
                        lambda ls: ls[:4] + ["19335 Q0 1017759\n"] + ls[5:])
    with pytest.raises(ValueError, match=r"q\.txt:5: expected 'qid iter docid grade'"):
        load_trec_qrels(qrels)
    conflict = _copy_lines(data_dir / "msmarco-passage-trec-dl/qrels.dl19-passage.txt", tmp_path / "c.txt", 3,
                           lambda ls: ls + [ls[0].rsplit(" ", 1)[0] + " 3\n"])
    with pytest.raises(ValueError, match="conflicting grades for query '19335' doc '1017759'"):
        load_trec_qrels(conflict)


def test_bad_beir_folder_and_biencoder(nq, data_dir, tmp_path):
    export_collection(nq, tmp_path / "beir", "beir")
    with open(tmp_path / "beir/qrels/test.tsv", "a") as handle:
        handle.write("no-such-query\tnqgold-0\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv: qrels name 1 unknown query id\(s\), e\.g\. \['no-such-query'\]"):
        load_beir_folder(tmp_path / "beir")
    shutil.rmtree(tmp_path / "beir" / "qrels")
    with pytest.raises(FileNotFoundError, match="missing qrels/test.tsv"):
        load_beir_folder(tmp_path / "beir")
    records = json.loads((data_dir / "dpr-nq-dev-sample/sample.json").read_text())[:2]
    records[1]["positive_ctxs"] = []
    (tmp_path / "bi.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"bi\.json: record 1: no positive_ctxs"):
        load_dpr_biencoder(tmp_path / "bi.json")
    del records[0]["hard_negative_ctxs"][3]["text"]
    (tmp_path / "bi.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"record 0\.hard_negative_ctxs\[3\]: missing field for passage text"):
        load_dpr_biencoder(tmp_path / "bi.json")
    (tmp_path / "trunc.json").write_text((data_dir / "dpr-nq-dev-sample/sample.json").read_text()[:5000])
    with pytest.raises(ValueError, match=r"trunc\.json: malformed JSON"):
        load_dpr_biencoder(tmp_path / "trunc.json")


def test_bad_squad_and_duplicate_documents(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "1", "answers": []}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field for question"):
        load_squad(tmp_path / "s.json")
    with pytest.raises(ValueError, match="duplicate doc id 'a'"):
        Corpus([Document("a", "", "x"), Document("a", "", "y")], source="mem")
