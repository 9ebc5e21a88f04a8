"""The lexical and fused first stages: BM25 (bm25s) saved in the experiment, RRF / score fusion."""
from __future__ import annotations

import numpy as np
import pytest

from elasticdenser.errors import InvalidInputError


def test_fusion_rules_follow_their_definitions():
    from elasticdenser.index.bm25 import fuse

    dense = (np.array([[0.9, 0.8, 0.1]], dtype=np.float32), np.array([[1, 2, 3]]))
    lexical = (np.array([[12.0, 11.0, -1]], dtype=np.float32), np.array([[2, 4, -1]]))
    scores, rows = fuse(dense, lexical, 3, "rrf")
    assert rows[0].tolist() == [2, 1, 4]  # in both lists first; then dense rank 1 beats lexical rank 2
    assert scores[0, 0] == pytest.approx(1 / 62 + 1 / 61)
    scores, rows = fuse(dense, lexical, 4, "score", alpha=0.5)
    # min-max per list: dense 1 -> 1, 2 -> 0.875, 3 -> 0; lexical 2 -> 1, 4 -> 0
    assert rows[0].tolist() == [2, 1, 3, 4]  # 3 and 4 both score 0: ties go to the lower row
    assert scores[0, 0] == pytest.approx(0.5 * 0.875 + 0.5 * 1.0)
    assert fuse(dense, lexical, 4, "score", alpha=1.0)[1][0, 0] == 1  # alpha 1 = dense order
    with pytest.raises(InvalidInputError, match="fusion"):
        fuse(dense, lexical, 3, "max")


def test_bm25_and_fused_first_stages_through_the_searcher(small_nq, build_tiny_experiment, tiny_bert_dir, one_thread):
    from elasticdenser.cli import main
    from elasticdenser.index import manifest as mf
    from elasticdenser.index.bm25 import BM25Index
    from elasticdenser.searcher import Searcher

    coll = small_nq(120, 20)
    exp = build_tiny_experiment(coll)
    with pytest.raises(Exception, match="--bm25"):
        Searcher.open(exp).search("anything", first_stage="bm25")
    assert main(["index", "nq-small", "--out", str(exp), "--merge", "--bm25", "--model", str(tiny_bert_dir),
                 "--no-progress"]) == 0
    assert mf.load(exp)["bm25"]["num_docs"] == 120
    searcher = Searcher.open(exp)
    doc = list(coll.corpus)[7]
    words = " ".join(doc.text.split()[3:15])  # a verbatim span: BM25 must rank its passage first
    lexical = searcher.search(words, k=5, first_stage="bm25")
    assert lexical.hits[0].doc_id == doc.doc_id and lexical.hits[0].text == doc.text
    fused = searcher.search(words, k=5, point="full", first_stage="fusion")
    dense = searcher.search(words, k=100, point="full")
    assert fused.hits[0].doc_id == doc.doc_id
    assert {h.doc_id for h in fused.hits} <= {h.doc_id for h in dense.hits} | {
        h.doc_id for h in searcher.search(words, k=100, first_stage="bm25").hits}
    run = searcher.batch_search(coll.queries, k=10, point="full", first_stage="fusion", fusion="score")
    assert run.name == f"{searcher.resolve_point('full').name}+bm25-score"
    assert searcher.batch_search(coll.queries, k=10, first_stage="bm25").name == "bm25"
    with pytest.raises(InvalidInputError, match="first_stage"):
        searcher.search("x", first_stage="sparse")
    with pytest.raises(InvalidInputError, match="other passages"):
        BM25Index(exp, 121)


def test_search_cli_writes_a_fused_run(small_nq, build_tiny_experiment, tiny_bert_dir, tmp_path, one_thread):
    from elasticdenser.cli import main
    from elasticdenser.data.trec import load_trec_run
    from elasticdenser.index import manifest as mf
    from elasticdenser.index.bm25 import build_bm25

    coll = small_nq(60, 10)
    exp = build_tiny_experiment(coll)
    mf.update(exp, bm25=build_bm25(exp))
    queries = tmp_path / "q.tsv"
    queries.write_text("".join(f"{q.query_id}\t{q.text}\n" for q in coll.queries))
    out = tmp_path / "fused.trec"
    assert main(["search", str(exp), "--queries", str(queries), "--first-stage", "fusion", "--k", "5",
                 "--out", str(out), "--model", str(tiny_bert_dir)]) == 0
    run = load_trec_run(out)  # the project's own reader accepts what search wrote
    assert len(run) == len(coll.queries) and all(len(docs) == 5 for docs in run.values())


def test_evaluate_rows_for_bm25_and_fusion_time_their_batches(small_nq, build_tiny_experiment, one_thread):
    from elasticdenser.eval.evaluate import evaluate_points
    from elasticdenser.index import manifest as mf
    from elasticdenser.index.bm25 import build_bm25
    from elasticdenser.searcher import Searcher

    coll = small_nq(60, 10)
    exp = build_tiny_experiment(coll)
    mf.update(exp, bm25=build_bm25(exp))
    searcher = Searcher.open(exp)
    for stage, name in (("bm25", "bm25"), ("fusion", f"{searcher.resolve_point('full').name}+bm25-rrf")):
        rows, runs = evaluate_points(searcher, coll, ["full"], k=10, batch_size=4, first_stage=stage)
        assert [r["point"] for r in rows] == [name] and rows[0]["latency_ms"] > 0 and 0 <= rows[0]["ndcg@10"] <= 1
