"""The ir_datasets path, offline: a hand-made cache in ir_datasets' exact layout, built from real
passages and questions (dpr-w100 NQ/TriviaQA dev, and beir/scifact), plus the clear error for a
dataset that is not cached.

ir_datasets fixes its cache root (``IR_DATASETS_HOME``) when ``ir_datasets.datasets.dpr_w100`` is
imported, so the loads run in a fresh interpreter with that variable set. The proxy variables
point at a closed local port so a missing file fails at once instead of trying the network.
"""
from __future__ import annotations

import ast
import csv
import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = r"""
import json, sys
from elasticdenser.data import load_collection
out = {}
for name in ["dpr-w100/natural-questions/dev", "irds:dpr-w100/trivia-qa/dev", "dpr-w100/natural-questions/test"]:
    c = load_collection(name)
    out[name] = {
        "summary": dict(c.summary()),
        "queries": [[q.query_id, q.text, list(q.answers)] for q in c.queries[:2]],
        "qrels0": c.qrels.get("0", {}),
        "len": len(c.corpus),
        "first": list(c.corpus[0].__dict__.values()),
        "get": list(c.corpus.get("11828866").__dict__.values()),
        "contains": ["11828866" in c.corpus, "no-such-doc" in c.corpus],
        "iter": sum(1 for _ in c.corpus),
    }
sf = load_collection("beir/scifact/test")
out["beir/scifact/test"] = {"summary": dict(sf.summary()), "doc": list(sf.corpus.get("4983").__dict__.values()),
                            "query1": [q.text for q in sf.queries if q.query_id == "1"], "qrels1": sf.qrels.get("1")}
errors = {}
for name in ["dpr-w100/natural-questions/train", "beir/nfcorpus/test"]:
    try:
        load_collection(name)
        errors[name] = None
    except RuntimeError as exc:
        errors[name] = str(exc)
out["errors"] = errors
print("RESULT" + json.dumps(out))
"""


def _build_cache(home: Path, data_dir: Path) -> dict:
    """docs.tsv.gz (DPR psgs_w100 layout), nq-dev.json.gz (real DPR biencoder-nq-dev records) and
    tqa-dev.json.gz (real TriviaQA dev questions, ``psg_id`` keys as in DPR's trivia files, with
    passages that contain an answer as positives)."""
    base = home / "dpr-w100"
    base.mkdir(parents=True)
    raw = (data_dir / "dpr-nq-dev-sample/sample.json").read_bytes()
    records = json.loads(raw)
    docs = {}
    for rec in records:
        for key in ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs"):
            for ctx in rec[key]:
                docs.setdefault(ctx["passage_id"], (ctx["text"], ctx["title"]))
    order = sorted(docs, key=int)
    with gzip.open(base / "docs.tsv.gz", "wt", encoding="utf-8") as handle:
        handle.write("id\ttext\ttitle\n")
        for pid in order:
            handle.write(f"{pid}\t{docs[pid][0]}\t{docs[pid][1]}\n")
    (base / "nq-dev.json.gz").write_bytes(gzip.compress(raw))
    lowered = {pid: docs[pid][0].lower() for pid in order}
    tqa = []
    with gzip.open(data_dir / "dpr-qa-topics/topics.dpr.trivia.dev.txt.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            question, answers = next(csv.reader([line.rstrip("\n")], delimiter="\t"))
            answers = ast.literal_eval(answers)
            hits = [pid for pid in order if any(len(a) > 3 and f" {a.lower()} " in lowered[pid] for a in answers)]
            if hits:
                tqa.append((question, answers, hits[:2]))
            if len(tqa) == 3:
                break

    def ctx(pid, score):
        return {"title": docs[pid][1], "text": docs[pid][0], "score": score, "title_score": 0, "psg_id": pid}

    tqa_records = [{"dataset": "trivia_dev", "question": q, "answers": a,
                    "positive_ctxs": [ctx(p, 1000 if i == 0 else 12.5) for i, p in enumerate(hits)],
                    "negative_ctxs": [ctx(order[0], 0.0)], "hard_negative_ctxs": [ctx(order[1], 9.0)]}
                   for q, a, hits in tqa]
    (base / "tqa-dev.json.gz").write_bytes(gzip.compress(json.dumps(tqa_records).encode()))
    return {"docs": len(docs), "tqa": tqa_records, "nq": records, "first_pid": order[0]}


def _build_beir_scifact(home: Path, data_dir: Path, tmp: Path) -> None:
    """``beir/scifact/source.zip`` as BEIR ships it (``scifact/corpus.jsonl``, ``queries.jsonl``,
    ``qrels/{train,test}.tsv``), written by our BEIR exporter from the real SciFact files."""
    from elasticdenser.data import load_collection
    from elasticdenser.data.export import export_collection

    export_collection(load_collection("scifact", data_dir), tmp / "scifact", "beir")
    (home / "beir" / "scifact").mkdir(parents=True)
    with zipfile.ZipFile(home / "beir" / "scifact" / "source.zip", "w") as archive:
        for path in sorted((tmp / "scifact").rglob("*")):
            if path.is_file():
                archive.write(path, f"scifact/{path.relative_to(tmp / 'scifact')}")


@pytest.fixture(scope="module")
def irds_run(tmp_path_factory, data_dir):
    home = tmp_path_factory.mktemp("irds-home")
    built = _build_cache(home, data_dir)
    _build_beir_scifact(home, data_dir, tmp_path_factory.mktemp("beir-src"))
    env = dict(os.environ, IR_DATASETS_HOME=str(home), ELASTICDENSER_DATA=str(data_dir),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(out_line for out_line in proc.stdout.splitlines() if out_line.startswith("RESULT"))
    return home, built, json.loads(line[len("RESULT"):])


def test_dpr_w100_nq_dev_offline(irds_run):
    home, built, out = irds_run
    nq = out["dpr-w100/natural-questions/dev"]
    assert nq["summary"]["queries"] == 5 and nq["summary"]["queries_with_answers"] == 5
    assert nq["queries"][0] == ["0", "who sings does he love me with reba", ["Linda Davis"]]
    # ir_datasets' grades: 2 = annotated gold (score 1000), 1 = other positive, 0 hard negative, -1 negative
    assert nq["qrels0"]["11828866"] == 2
    assert sorted(set(nq["qrels0"].values())) == [-1, 0, 1, 2]
    assert nq["summary"]["qrels"] == built["docs"] == 751  # every distinct ctx judged once
    assert nq["len"] == nq["iter"] == 751  # the true count of the cached corpus, not ir_datasets' 21M hint
    assert nq["get"][0] == "11828866" and "Linda Davis" in nq["get"][2]
    assert nq["contains"] == [True, False]
    assert nq["first"][0] == built["first_pid"]  # position 0 = first line of docs.tsv.gz


def test_dpr_w100_trivia_dev_offline(irds_run):
    _, built, out = irds_run
    tqa = out["irds:dpr-w100/trivia-qa/dev"]
    assert tqa["summary"]["queries"] == len(built["tqa"]) == 3
    assert tqa["queries"][0][1] == built["tqa"][0]["question"]
    assert tqa["queries"][0][2] == list(dict.fromkeys(built["tqa"][0]["answers"]))
    gold = built["tqa"][0]["positive_ctxs"][0]["psg_id"]
    assert tqa["qrels0"][gold] == 2  # psg_id keys are read (TriviaQA layout)


def test_dpr_w100_test_split_uses_dpr_test_questions(irds_run):
    _, _, out = irds_run
    test = out["dpr-w100/natural-questions/test"]
    assert test["summary"]["queries"] == 3610 and test["summary"]["qrels"] == 0
    assert test["queries"][0] == ["0", "who got the first nobel prize in physics", ["Wilhelm Conrad Röntgen"]]
    assert test["len"] == 751


def test_missing_dataset_gives_one_clear_error(irds_run):
    home, _, out = irds_run
    nq_train = out["errors"]["dpr-w100/natural-questions/train"]
    assert nq_train is not None
    assert "'dpr-w100/natural-questions/train'" in nq_train
    assert str(home / "dpr-w100") in nq_train and "nq-train.json.gz" in nq_train
    assert "Traceback" not in nq_train
    beir = out["errors"]["beir/nfcorpus/test"]
    assert beir is not None and "'beir/nfcorpus/test'" in beir and str(home / "beir") in beir


def test_beir_scifact_through_ir_datasets(irds_run):
    _, _, out = irds_run
    sf = out["beir/scifact/test"]
    assert (sf["summary"]["documents"], sf["summary"]["queries"], sf["summary"]["qrels"]) == (5183, 300, 339)
    assert sf["doc"][0] == "4983" and sf["doc"][2].startswith("Alterations of the architecture")
    assert sf["query1"] == ["0-dimensional biomaterials show inductive properties."]
    assert sf["qrels1"] == {"31715818": 1}
