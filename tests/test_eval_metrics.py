"""Answer matching (DPR has_answer), ranx metrics wrapper, report table."""
from __future__ import annotations

import pytest

from elasticdenser.eval import answers as ans
from elasticdenser.eval import metrics
from elasticdenser.eval.report import markdown_table, save_report


def test_has_answer_follows_dpr():
    assert ans.has_answer(["Charles Darwin"], "The theory was proposed by charles darwin in 1859.")
    assert not ans.has_answer(["art"], "They went to a party.")  # token match, not substring
    assert ans.has_answer(["Beyoncé"], "Beyonce\u0301 Knowles sang")  # NFD: composed == decomposed
    assert ans.has_answer(["May 18 , 2018"], "released on May 18, 2018 worldwide")  # DPR tokenisation
    assert ans.has_answer(["U.S."], "the u.s. army")
    assert not ans.has_answer(["", "  "], "anything")
    assert ans.tokens("Don't stop") == ["don", "'", "t", "stop"]


def test_topk_accuracy():
    ranks = ans.first_hit_ranks({"q1": ["x", "paris is big"], "q2": ["nothing"]}, {"q1": ["Paris"], "q2": ["Rome"]})
    assert ranks == {"q1": 2, "q2": 0}
    assert ans.topk_accuracy(ranks, (1, 5)) == {"answer@1": 0.0, "answer@5": 0.5}


@pytest.mark.slow  # ranx compiles its metrics with numba on first use in a process (~10 s)
def test_ranx_metrics_and_missing_queries():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 0.9, "d3": 0.5}, "q9": {"d2": 1.0}}  # q2 not retrieved, q9 unjudged
    res = metrics.evaluate(qrels, run, ["mrr@10", "recall@20", "ndcg@10"])
    assert res["mrr@10"] == pytest.approx(0.5) and res["recall@20"] == pytest.approx(0.5)
    run2 = metrics.make_run({"q1": {"d3": 0.9, "d1": 0.5}, "q2": {"d2": 1.0}}, name="b")
    run1 = metrics.make_run({"q1": {"d1": 0.9}, "q2": {"d2": 1.0}}, name="a")
    report = metrics.compare(qrels, [run1, run2])
    assert "a" in str(report) and "b" in str(report)


def test_report_table(tmp_path):
    rows = [{"point": "L6-H12-F1536-D384", "params_m": 22.7, "latency_ms": 12.5, "ndcg@10": 0.95, "answer@20": 0.99}]
    md = markdown_table(rows)
    assert "| point | params (M) | batch latency (ms) | nDCG@10 | Ans@20 |" in md and "0.9500" in md
    paths = save_report(tmp_path, rows, {"collection": "x"})
    assert paths["json"].is_file() and "nDCG@10" in paths["md"].read_text()
