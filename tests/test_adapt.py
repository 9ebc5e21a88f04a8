"""Label-free corpus adaptation (issue 14): query sources on real files, the leakage guard on every
source, trained models that carry their document tower, training on an experiment's stored
embeddings, and the memory-bounded candidate path.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from elasticdenser.data import LeakageError, normalize_question
from elasticdenser.training.config import TrainConfig

POINTS = ["L4-H4-F128-D64", "L2-H2-F64-D32"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nq_questions(data_dir):
    """Real questions that are not nq-sample evaluation questions: DPR NQ dev (pool source)."""
    import elasticdenser.data as data

    return list(data.load_query_pool(data_dir=data_dir, exclude=["nq-sample"]))[:60]


def config(tmp_path: Path, tiny_bert_dir, data_dir, **kw) -> TrainConfig:
    base = dict(model=str(tiny_bert_dir), output_dir=str(tmp_path / "run"), data_dir=str(data_dir),
                cache_dir=str(tmp_path / "cache"), collection="nq-sample", exclude=["nq-sample"], points=POINTS,
                sampling="fixed", doc_max_length=32, query_max_length=32, reorder=False, reorder_layers=False,
                batch_size=8, steps=2, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=0, eval_every=0,
                use_collection_train=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------- query files

def write_formats(folder: Path, questions) -> dict:
    """The same questions as TREC SGML topics, tsv, jsonl (gzipped) and one per line."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    files = {"trec": folder / "topics.trec", "tsv": folder / "q.tsv", "jsonl": folder / "q.jsonl.gz",
             "txt": folder / "q.txt"}
    files["trec"].write_text("".join(f"<top>\n<num> Number: {i}\n<title> {q.text}\n</top>\n\n"
                                     for i, q in enumerate(questions)))
    files["tsv"].write_text("".join(f"{i}\t{q.text}\n" for i, q in enumerate(questions)))
    with gzip.open(files["jsonl"], "wt") as fh:
        fh.write("".join(json.dumps({"_id": str(i), "text": q.text}) + "\n" for i, q in enumerate(questions)))
    files["txt"].write_text("".join(f"{q.text}\n\n" for q in questions))
    return files


def test_query_files_in_every_format_give_the_same_questions(tmp_path, nq_questions):
    from elasticdenser.data.queries import load_query_file

    files = write_formats(tmp_path, nq_questions[:20])
    want = [q.text for q in nq_questions[:20]]
    for kind, path in files.items():
        got = load_query_file(path)
        assert [q.text for q in got] == want, kind
        assert len({q.query_id for q in got}) == 20


def test_datasets_sources_folder_parquet_jsonl_and_tevatron(tmp_path, nq_questions, data_dir):
    import datasets

    from elasticdenser.data.queries import load_hf_queries, load_query_file

    texts = [q.text for q in nq_questions[:12]]
    ds = datasets.Dataset.from_dict({"query_id": [f"q{i}" for i in range(12)], "query": texts})
    ds.save_to_disk(str(tmp_path / "folder"))
    ds.to_parquet(str(tmp_path / "q.parquet"))
    ds.to_json(str(tmp_path / "q.jsonl"))
    for path in (tmp_path / "folder", tmp_path / "q.parquet"):
        assert [q.text for q in load_query_file(path)] == texts
    assert [q.query_id for q in load_hf_queries(tmp_path / "q.jsonl")] == [f"q{i}" for i in range(12)]

    # Tevatron layout: positives name corpus documents by docid
    import elasticdenser.data as data

    corpus = list(data.load_collection("nq-sample", data_dir).corpus)[:5]
    rows = [{"query_id": f"t{i}", "query": texts[i], "answers": [],
             "positive_passages": [{"docid": corpus[i].doc_id, "title": corpus[i].title, "text": corpus[i].text}],
             "negative_passages": [{"docid": corpus[4 - i].doc_id, "title": "", "text": corpus[4 - i].text}]}
            for i in range(5)]
    tev = tmp_path / "tevatron"
    datasets.Dataset.from_list(rows).save_to_disk(str(tev))
    got = load_hf_queries(tev)
    assert got.positives == {f"t{i}": [corpus[i].doc_id] for i in range(5)}

    bad = tmp_path / "bad"
    datasets.Dataset.from_dict({"query": ["ok", " "]}).save_to_disk(str(bad))
    with pytest.raises(ValueError, match=r"row 1: field 'query'"):
        load_hf_queries(bad)


def test_pseudo_queries_are_seeded_distinct_and_query_sized(data_dir):
    import elasticdenser.data as data
    from elasticdenser.data.pseudo import pseudo_queries

    docs = list(data.load_collection("scifact", data_dir).corpus)[:300]
    a = pseudo_queries(docs, 500, seed=3, kind="span")
    assert [q.text for q in a] == [q.text for q in pseudo_queries(docs, 500, seed=3, kind="span")]
    assert [q.text for q in a] != [q.text for q in pseudo_queries(docs, 500, seed=4, kind="span")]
    assert len(a) == 500 and len({normalize_question(q.text) for q in a}) == 500
    assert all(4 <= len(q.text.split()) <= 16 for q in a)
    bodies = [" ".join(d.text.split()) for d in docs]
    assert all(any(q.text in b for b in bodies) for q in a[:50])  # spans of the corpus's own text
    sentences = pseudo_queries(docs, 100, seed=3)  # the default recipe
    assert all(4 <= len(q.text.split()) <= 16 for q in sentences) and len(sentences) == 100
    opening = [part for b in bodies for part in re.split(r"(?<=[.!?])\s+", b)]
    assert all(any(part.startswith(q.text) for part in opening) for q in sentences)  # each opens a sentence


# ------------------------------------------------------------------------------- mixing + guard

def test_sources_mix_in_their_weights_and_report_counts(tmp_path, tiny_bert_dir, data_dir, nq_questions, small_nq):
    from elasticdenser.training.data import load_training_data

    files = write_formats(tmp_path / "q", nq_questions[:40])
    cfg = config(tmp_path, tiny_bert_dir, data_dir, sources=[f"file:{files['tsv']}@3", "pseudo@1"],
                 pseudo_queries=400)
    data = load_training_data(cfg, collection=small_nq(120, 20))
    assert data.sources[f"file:{files['tsv']}"]["questions"] == 40
    assert data.sources["pseudo"]["questions"] == 400
    stream = [i for b in range(400) for i in data.batch_indices(b, 8, 0, 1, cfg.seed)]
    from_file = np.mean([i < 40 for i in stream])
    assert abs(from_file - 0.75) < 0.03  # weight 3 : 1, although the file holds 10x fewer questions
    plain = load_training_data(cfg.replace(sources=[f"file:{files['tsv']}", "pseudo"]), collection=small_nq(120, 20))
    assert plain.probabilities is None  # no weights: concatenated, each example equally likely
    with pytest.raises(ValueError, match="every source a weight or none"):
        cfg.replace(sources=["pool@1", "pseudo"])


def test_two_pseudo_recipes_mix_as_two_sources(tmp_path, tiny_bert_dir, data_dir, small_nq):
    """``pseudo:title`` and ``pseudo:sentence`` are separate sources of one run, each cut by its own
    recipe (a corpus whose titles read like queries gets both)."""
    from elasticdenser.training.data import load_training_data

    coll = small_nq(120, 20)
    titles = {" ".join(d.title.split()) for d in coll.corpus}
    cfg = config(tmp_path, tiny_bert_dir, data_dir, sources=["pseudo:title@1", "pseudo:sentence@1"],
                 pseudo_queries=60, pseudo_min_words=1)
    data = load_training_data(cfg, collection=coll)
    by_title, by_sentence = data.sources["pseudo:title"]["questions"], data.sources["pseudo:sentence"]["questions"]
    assert by_title > 0 and by_sentence == 60
    texts = [e.text for e in data.examples]
    assert sum(t in titles for t in texts[:by_title]) == by_title  # the first source is titles only
    assert sum(t in titles for t in texts[by_title:]) < by_sentence / 2  # the second is cut from the text
    with pytest.raises(ValueError, match="pseudo-query recipe 'headline'"):
        cfg.replace(sources=["pseudo:headline"])


def test_prose_recipe_cuts_long_running_text_at_its_own_lengths(tmp_path, tiny_bert_dir, data_dir):
    """``pseudo:prose:30-90`` next to the default sentences: long spans of running text (cacm's
    citation rows and number runs are skipped and counted), each source at its own lengths."""
    import elasticdenser.data as data
    from elasticdenser.data.pseudo import parse_recipe, pseudo_queries
    from elasticdenser.training.data import load_training_data

    cacm = data.load_collection("cacm", data_dir)
    docs = list(cacm.corpus)
    long = pseudo_queries(docs, 300, seed=1, kind="prose", min_words=30, max_words=90)
    assert len(long) == 300 and all(30 <= len(q.text.split()) <= 90 for q in long)
    assert long.skipped["spans that are not running text"] > 0
    spans = pseudo_queries(docs, 300, seed=1, kind="span", min_words=30, max_words=90)
    numeric = [q for q in spans if sum(w.isdigit() for w in q.text.split()) > 0.2 * len(q.text.split())]
    assert numeric and not [q for q in long if sum(w.isdigit() for w in q.text.split()) > 0.2 * len(q.text.split())]
    assert parse_recipe("prose:30-90", 4, 16) == ("prose", 30, 90) and parse_recipe("sentence", 4, 16) == ("sentence", 4, 16)
    for bad in ("prose:90-30", "prose:long", "prose:0-5"):
        with pytest.raises(ValueError, match="pseudo-query recipe"):
            parse_recipe(bad, 4, 16)

    cfg = config(tmp_path, tiny_bert_dir, data_dir, collection="cacm", exclude=["cacm"],
                 sources=["pseudo@1", "pseudo:prose:30-90@1"], pseudo_queries=80)
    mixed = load_training_data(cfg, collection=cacm)
    assert mixed.sources["pseudo"]["questions"] == 80 and mixed.sources["pseudo:prose:30-90"]["questions"] == 80
    lengths = [len(e.text.split()) for e in mixed.examples]
    assert max(lengths[:80]) <= 16 and min(lengths[80:]) >= 30  # in source order: sentences, then prose
    with pytest.raises(ValueError, match="lengths are written MIN-MAX"):
        cfg.replace(sources=["pseudo:prose:long@1"])


def test_leakage_guard_covers_every_source(tmp_path, tiny_bert_dir, data_dir, nq_questions, small_nq):
    import datasets

    from elasticdenser.data.types import Collection, Corpus, Document
    from elasticdenser.training.data import load_training_data

    coll = small_nq(120, 20)
    leaked = coll.queries[0].text
    log = tmp_path / "log.txt"
    log.write_text(f"{nq_questions[0].text}\n{leaked.upper()}?\n")
    hf = tmp_path / "hf"
    datasets.Dataset.from_dict({"query": [nq_questions[1].text, leaked]}).save_to_disk(str(hf))
    cfg = config(tmp_path, tiny_bert_dir, data_dir, exclude=["nq-small"])
    for source in (f"file:{log}", f"hf:{hf}"):
        with pytest.raises(LeakageError, match="nq-small"):
            load_training_data(cfg.replace(sources=[source]), collection=coll)
        data = load_training_data(cfg.replace(sources=[source], drop_overlap=True), collection=coll)
        assert [e.text for e in data.examples] == [nq_questions[0 if source.startswith("file") else 1].text]
        assert data.sources[source]["skipped"] == {"evaluation questions dropped by the leakage guard": 1}
    # pseudo-queries: a document that *is* an evaluation question yields it; dropped and counted, never raised
    docs = [Document("leak", "", leaked)] + list(coll.corpus)[:3]
    tiny = Collection("nq-small", Corpus(docs), coll.queries, coll.qrels)
    data = load_training_data(cfg.replace(sources=["pseudo"], pseudo_queries=50, pseudo_min_words=1,
                                          pseudo_max_words=64), collection=tiny)
    assert normalize_question(leaked) not in {normalize_question(e.text) for e in data.examples}
    assert data.sources["pseudo"]["skipped"]["evaluation questions dropped by the leakage guard"] >= 1


def test_tevatron_positives_become_labelled_examples(tmp_path, tiny_bert_dir, data_dir, nq_questions, small_nq):
    import datasets

    from elasticdenser.training.data import load_training_data

    coll = small_nq(60, 10)
    docs = list(coll.corpus)
    rows = [{"query_id": f"t{i}", "query": nq_questions[i].text,
             "positive_passages": [{"docid": docs[i].doc_id if i < 3 else "not-in-corpus", "text": "x"}],
             "negative_passages": []} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "tev"))
    data = load_training_data(config(tmp_path, tiny_bert_dir, data_dir, sources=[f"hf:{tmp_path / 'tev'}"],
                                     exclude=["nq-small"]), collection=coll)
    assert [e.positives for e in data.examples] == [(0,), (1,), (2,), (), ()]
    assert data.labelled == 3


# ------------------------------------------------------------------------------- portable model

def run_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "elasticdenser", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_trained_model_indexes_with_its_document_tower_and_reuses_the_experiment(tmp_path, tiny_bert_dir, data_dir):
    """``index --model TRAINED``: documents = the start model's vectors; evaluate needs no override;
    a second training run reads the experiment's store instead of encoding the corpus again."""
    from elasticdenser.index import encode as enc
    from elasticdenser.index import manifest as mf
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.model.towers import DOCUMENT_TOWER_FILE
    from elasticdenser.training.loop import train

    corpus = tmp_path / "beir"
    (corpus / "qrels").mkdir(parents=True)
    import elasticdenser.data as data

    nq = data.load_collection("nq-sample", data_dir)
    docs = list(nq.corpus)[:40]
    keep = {d.doc_id for d in docs}
    queries = [q for q in nq.queries if next(iter(nq.qrels[q.query_id])) in keep][:8]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n"
                                                 for d in docs))
    (corpus / "queries.jsonl").write_text("".join(json.dumps({"_id": q.query_id, "text": q.text}) + "\n" for q in queries))
    (corpus / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q.query_id}\t{next(iter(nq.qrels[q.query_id]))}\t1\n" for q in queries))

    base = tmp_path / "base"
    run_cli("index", str(corpus), "--out", str(base), "--model", str(tiny_bert_dir), "--widths", "64,32", "--no-progress",
            cwd=tmp_path)
    cfg = config(tmp_path, tiny_bert_dir, data_dir, collection=str(corpus), exclude=[str(corpus)], sources=["pseudo"],
                 pseudo_queries=64, experiment=str(base))
    result = train(cfg)
    assert not (tmp_path / "cache").exists()  # the experiment's store was read, nothing encoded again
    model = result.model_dir
    start = ElasticEncoder.from_pretrained(str(tiny_bert_dir))
    assert json.loads((model / DOCUMENT_TOWER_FILE).read_text())["fingerprint"] == start.fingerprint()
    assert json.loads((model / "training_summary.json").read_text())["document_embeddings"] == str(base / enc.EMBEDDINGS)

    exp = tmp_path / "exp"
    run_cli("index", str(corpus), "--out", str(exp), "--model", str(model), "--widths", "64,32", "--no-progress",
            "--precision", "fp32", cwd=tmp_path)  # exact: the document tower is the start model, bit for bit
    stored = np.load(exp / enc.EMBEDDINGS)
    want = start.encode([d.contents for d in docs], None, batch_size=16)
    np.testing.assert_allclose(stored, want, atol=1e-5)
    m = mf.load(exp)
    assert m["model"]["fingerprint"] == result.encoder.fingerprint() != m["document_model"]["fingerprint"]
    # the trained model cuts widths in the principal basis of the corpus's documents, and so do its indexes
    import faiss

    from elasticdenser.errors import StateError
    from elasticdenser.operating_point import principal_basis, truncate
    from elasticdenser.searcher import Searcher

    basis = result.encoder.output_basis.numpy()
    np.testing.assert_allclose(basis, principal_basis(np.load(base / enc.EMBEDDINGS)), atol=1e-6)
    small = faiss.read_index(str(exp / "index-d32.faiss"))
    np.testing.assert_allclose(small.reconstruct_n(0, small.ntotal), truncate(stored, 32, True, basis), atol=1e-5)
    assert m["indexes"]["32"]["basis"] == m["model"]["output_basis"] == result.encoder.output_basis_sha
    # a query model that cuts in another basis is refused at a small width (full-width scores do not depend on it)
    other = ElasticEncoder.from_pretrained(str(model))
    other.set_output_basis(None)
    with pytest.warns(UserWarning, match="allow_mismatch"):
        searcher = Searcher.open(exp, allow_mismatch=True, encoder=other)
    searcher.index(64)
    with pytest.raises(StateError, match="output basis"):
        searcher.index(32)
    from elasticdenser.model.towers import load_towers

    assert load_towers(str(exp / "model"))[1].fingerprint() == start.fingerprint()  # EXP/model stays portable
    out = run_cli("evaluate", str(exp), str(corpus), "--points", ",".join(POINTS), cwd=tmp_path)
    assert "L2-H2-F64-D32" in out

    # the indexed corpus switched to the trained model in place: nothing encoded or merged again
    before = (base / enc.EMBEDDINGS).stat().st_mtime_ns
    run_cli("index", str(corpus), "--out", str(base), "--merge", "--model", str(model), "--widths", "64,32",
            "--no-progress", cwd=tmp_path)
    assert (base / enc.EMBEDDINGS).stat().st_mtime_ns == before
    assert mf.load(base)["model"]["fingerprint"] == result.encoder.fingerprint()
    assert mf.load(base)["indexes"]["32"]["basis"] == result.encoder.output_basis_sha  # rebuilt in the model's basis
    assert ElasticEncoder.from_pretrained(str(base / "model")).fingerprint() == result.encoder.fingerprint()

    # continuing from the trained model: its document tower is the start model, so the experiment matches
    again = train(cfg.replace(output_dir=str(tmp_path / "run2"), model=str(model)))
    assert json.loads((again.model_dir / DOCUMENT_TOWER_FILE).read_text())["fingerprint"] == start.fingerprint()
    # an experiment whose documents another model encoded is refused
    manifest = json.loads((base / mf.MANIFEST).read_text())
    manifest["model"]["fingerprint"] = manifest["document_model"]["fingerprint"] = "f" * 64
    (base / mf.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(mf.ManifestMismatchError, match="document model"):
        train(cfg.replace(output_dir=str(tmp_path / "run3")))


def test_document_tower_that_changed_is_refused(tmp_path, tiny_bert_dir):
    from elasticdenser.model.towers import load_towers, record_document_tower

    model = tmp_path / "m"
    import shutil

    shutil.copytree(tiny_bert_dir, model)
    record_document_tower(model, "0" * 64, str(tiny_bert_dir))
    with pytest.raises(RuntimeError, match="changed after training"):
        load_towers(str(model))


# ------------------------------------------------------------------------------- bounded candidates

def test_faiss_candidates_give_the_exact_loss_when_k_covers_the_corpus(tiny_encoder):
    from elasticdenser.training.candidates import StoreDocuments
    from elasticdenser.training.data import Example
    from elasticdenser.training.losses import FixedDocuments
    from elasticdenser.training.objective import ElasticObjective

    torch.manual_seed(0)
    texts = [f"passage number {i} about topic {i % 7}" for i in range(30)]
    emb = tiny_encoder.encode(texts, None, batch_size=16)
    queries = [f"what about topic {i}" for i in range(6)]
    examples = [Example(q, (i,) if i % 2 == 0 else ()) for i, q in enumerate(queries)]
    batch = tiny_encoder.tokenize(queries, 32)
    space = tiny_encoder.space
    widths = [space.hidden_size, 32]
    point = space.resolve(POINTS[1])
    losses = {}
    for name, docs, k in [("exact", FixedDocuments(torch.from_numpy(emb)), 0),
                          ("faiss", StoreDocuments(emb, sampled_negatives=0), len(texts))]:
        cfg = TrainConfig(distill_candidates=k, candidate_search="faiss" if k else "exact", hard_negatives=3)
        objective = ElasticObjective(cfg, docs, widths, space.hidden_size)
        with torch.no_grad():
            prep = objective.prepare(tiny_encoder, batch, examples)
            pooled = tiny_encoder.pooled(batch["input_ids"], batch["attention_mask"], point, batch.get("token_type_ids"))
            losses[name] = objective.point_loss(tiny_encoder, pooled, point, prep)
    assert float(losses["exact"][0]) == pytest.approx(float(losses["faiss"][0]), rel=1e-5)
    assert losses["exact"][1].keys() == losses["faiss"][1].keys() == {"distill", "align", "contrastive"}

    # with k < N only the candidates' rows are read, and the positives are always among them
    store = StoreDocuments(emb, sampled_negatives=4)
    rows = store.candidates(torch.from_numpy(tiny_encoder.encode(queries, None)), 3, extra=[29])
    assert 29 in rows.tolist() and len(rows) < len(texts) and rows.tolist() == sorted(set(rows.tolist()))
    q = torch.from_numpy(tiny_encoder.encode(queries, None))
    # the random rows are a function of the micro-batch: a resumed run draws what an uninterrupted one would
    assert store.candidates(q, 1, key=5).tolist() == StoreDocuments(emb, sampled_negatives=4).candidates(q, 1, key=5).tolist()
    assert any(store.candidates(q, 1, key=k).tolist() != store.candidates(q, 1, key=5).tolist() for k in range(6, 9))


def test_training_on_the_bounded_path_end_to_end(tmp_path, tiny_bert_dir, data_dir, small_nq):
    """``candidate_search: faiss`` through ``train``: pseudo-queries only, validation on the teacher's
    candidates, the summary naming each source."""
    from elasticdenser.training.loop import METRICS_FILE, train

    cfg = config(tmp_path, tiny_bert_dir, data_dir, collection="nq-small", exclude=["nq-small"], sources=["pseudo"],
                 pseudo_queries=80, candidate_search="faiss", distill_candidates=8, sampled_negatives=16,
                 eval_every=2, val_size=16, steps=2)
    result = train(cfg, collection=small_nq(120, 20))
    records = [json.loads(line) for line in (result.output_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "val"] == [0, 2]
    assert all(np.isfinite(v) for v in result.last_losses.values()) and result.last_losses
    summary = json.loads((result.model_dir / "training_summary.json").read_text())
    assert summary["sources"]["pseudo"]["questions"] == 80 - 16 and summary["sources"]["pseudo"]["share"] == 1.0


def test_no_labels_and_no_pool_means_pseudo_queries(tmp_path, tiny_bert_dir, small_nq, monkeypatch):
    """`train --collection X` on a corpus of one's own, with no data directory (so no pool) and no
    labels: the default sources fall back to pseudo-queries of the corpus; with the pool's files
    present they are mixed 1:1 with it."""
    from elasticdenser.training.data import load_training_data

    coll = small_nq(80, 10)
    monkeypatch.delenv("ELASTICDENSER_DATA", raising=False)
    cfg = TrainConfig(model=str(tiny_bert_dir), collection="nq-small", exclude=["nq-small"], pseudo_queries=50,
                      use_collection_train=False, eval_every=0, progress=False)
    data = load_training_data(cfg, collection=coll)
    assert list(data.sources) == ["pseudo"] and len(data.examples) == 50 and data.probabilities is None


def test_default_sources_with_the_pool_mix_half_and_half(tmp_path, tiny_bert_dir, data_dir, small_nq):
    from elasticdenser.training.data import load_training_data

    cfg = config(tmp_path, tiny_bert_dir, data_dir, collection="nq-small", exclude=["nq-small"], pseudo_queries=500)
    data = load_training_data(cfg, collection=small_nq(80, 10))
    assert list(data.sources) == ["pool", "pseudo"]
    assert data.sources["pool"]["share"] == data.sources["pseudo"]["share"] == 0.5
    n_pool = data.sources["pool"]["questions"]
    stream = [i for b in range(200) for i in data.batch_indices(b, 8, 0, 1, cfg.seed)]
    assert abs(np.mean([i < n_pool for i in stream]) - 0.5) < 0.04
