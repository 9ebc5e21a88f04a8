"""Searcher API and the search/index/evaluate CLI on a tiny real-text experiment (tiny random BERT)."""
from __future__ import annotations

import threading

import pytest

from elasticdenser.cli import main
from elasticdenser.index import manifest as mf
from elasticdenser.searcher import Searcher


@pytest.fixture(scope="module")
def coll(small_nq):
    return small_nq(n_docs=200, n_queries=30)


@pytest.fixture(scope="module")
def exp(build_tiny_experiment, coll):
    return build_tiny_experiment(coll, chunk_size=64)


@pytest.fixture(scope="module")
def searcher(exp, tiny_encoder):
    return Searcher.open(exp, encoder=tiny_encoder)


def test_layout_and_manifest(exp, tiny_encoder):
    m = mf.load(exp)
    widths = tiny_encoder.space.widths(tiny_encoder.default_points())
    assert m["widths"] == widths and len(widths) >= 2
    for w in widths:
        assert (exp / f"index-d{w}.faiss").is_file() and m["indexes"][str(w)]["ntotal"] == 200
    assert m["model"]["fingerprint"] == tiny_encoder.fingerprint()
    assert m["collection"] == {"name": "nq-small", "num_docs": 200}
    emb = dict(m["embeddings"])
    assert len(emb.pop("content_sha256")) == len(emb.pop("doc_ids_sha256")) == 64  # what ties it to the content
    assert emb == {"file": "embeddings.npy", "width": 64, "dtype": "float32", "precision": "fp32"}
    assert m["points"] == [p.name for p in tiny_encoder.default_points()]
    for key in ("created", "package_version", "format"):
        assert key in m
    assert (exp / "model").is_dir() and (exp / "doc_ids.txt").is_file()


def test_search_returns_passages(searcher, coll):
    doc = coll.corpus[3]
    res = searcher.search(doc.contents, k=5)
    assert res.point == searcher.encoder.space.full and len(res.hits) == 5
    top = res.hits[0]
    assert (top.doc_id, top.title, top.text) == (doc.doc_id, doc.title, doc.text)
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)


def test_every_point_searches_its_width_index(searcher, coll):
    for p in searcher.points:
        run, rows = searcher.batch_search(coll.queries, k=10, point=p, return_rows=True)
        assert run.name == p.name and len(run) == len(coll.queries)
        q = coll.queries[0]
        emb = searcher.encoder.encode([q.text], point=p)
        _, ids = searcher.index(p.width).search(emb, 10)
        assert rows[q.query_id] == list(ids[0])


def test_empty_and_long_queries(searcher, coll):
    with pytest.raises(ValueError, match="empty query"):
        searcher.search("   ", k=3)
    queries = {"a": "who wrote hamlet", "b": " \t", "c": ""}
    with pytest.raises(ValueError, match="2 empty"):
        searcher.batch_search(queries, k=3)
    run = searcher.batch_search(queries, k=3, skip_empty=True)
    assert list(run.keys()) == ["a"]
    before = searcher.truncated_queries
    with pytest.warns(UserWarning, match="1 query longer than"):
        res = searcher.search("hamlet " * 2000, k=3)
    assert len(res.hits) == 3 and searcher.truncated_queries == before + 1


def test_concurrent_callers_get_sequential_results(searcher, coll):
    texts = [q.text for q in coll.queries]
    points = searcher.points
    expected = {(i, p): [h.doc_id for h in searcher.search(t, 5, p).hits] for i, t in enumerate(texts[:12]) for p in points}
    got, errors = {}, []

    def worker(items):
        try:
            for i, p in items:
                got[(i, p)] = [h.doc_id for h in searcher.search(texts[i], 5, p).hits]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    items = list(expected)
    threads = [threading.Thread(target=worker, args=(items[j::4],)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


def test_model_mismatch_refused_unless_overridden(exp, tiny_bert_dir):
    from elasticdenser.model.encoder import ElasticEncoder

    other = ElasticEncoder.from_pretrained(str(tiny_bert_dir))
    with __import__("torch").no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(mf.ManifestMismatchError, match="does not match"):
        Searcher.open(exp, encoder=other)
    with pytest.warns(UserWarning, match="allowed"):
        s = Searcher.open(exp, encoder=other, allow_mismatch=True)
    assert s.search("hamlet", k=1).hits


def test_missing_index_file(exp, tiny_encoder, tmp_path):
    import shutil

    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    w = tiny_encoder.space.widths(tiny_encoder.default_points())[-1]
    (copy / f"index-d{w}.faiss").unlink()
    s = Searcher.open(copy, encoder=tiny_encoder)
    with pytest.raises(FileNotFoundError, match=f"index-d{w}.faiss"):
        s.search("hamlet", point=s.points[-1])
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Searcher.open(tmp_path, encoder=tiny_encoder)


def test_cli_search_and_evaluate(exp, tmp_path, capsys, data_dir):
    qfile = tmp_path / "q.tsv"
    qfile.write_text("q1\twho wrote hamlet\nq2\twhere is the eiffel tower\n", encoding="utf-8")
    out = tmp_path / "run.trec"
    point = Searcher.open(exp).points[-1].name
    assert main(["search", str(exp), "--queries", str(qfile), "--point", point, "-k", "4", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and lines[0].split()[0] == "q1" and lines[0].split()[-1] == point
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("q1\tcaf\xe9\n".encode("latin-1"))
    assert main(["search", str(exp), "--queries", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "nope"), "--queries", str(qfile)]) == 2
    assert "manifest.json" in capsys.readouterr().err
