"""Corpus encoding: chunked, resumable, sharded == unsharded, atomic merge, float16 store."""
from __future__ import annotations

import numpy as np
import pytest

from elasticdenser.index import build
from elasticdenser.index import encode as enc
from elasticdenser.index.store import EmbeddingStore
from elasticdenser.operating_point import truncate


@pytest.fixture(scope="module")
def coll(small_nq):
    return small_nq(n_docs=150, n_queries=20)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_encoder, coll):
    """One uninterrupted, unsharded encoding."""
    out = tmp_path_factory.mktemp("ref")
    build.encode_stage(tiny_encoder, coll.corpus, out, collection="nq-small", chunk_size=40, progress=False)
    build.merge_stage(tiny_encoder, out, collection="nq-small")
    return out


def test_store_matches_direct_encoding(reference, tiny_encoder, coll):
    store = EmbeddingStore.open(reference / enc.EMBEDDINGS)
    assert (len(store), store.dim, store.dtype) == (150, 64, "float32")
    direct = tiny_encoder.encode([d.contents for d in coll.corpus][:10])
    np.testing.assert_allclose(store.array[:10], direct, atol=1e-5)
    assert enc.read_doc_ids(reference) == coll.corpus.doc_ids()
    # plain numpy opens the store, memory-mapped
    assert isinstance(np.load(reference / enc.EMBEDDINGS, mmap_mode="r"), np.memmap)


def test_doc_ids_are_compact_and_checked(reference, coll, tmp_path):
    ids = enc.read_doc_ids(reference)
    expected = coll.corpus.doc_ids()
    assert isinstance(ids, enc.DocIds) and len(ids) == len(expected) == 150
    assert (ids[0], ids[149], ids[-1], ids[3:5]) == (expected[0], expected[149], expected[-1], expected[3:5])
    assert list(ids) == expected and ids != expected[:-1]
    with pytest.raises(IndexError, match="out of range"):
        ids[150]
    assert list(enc.DocIds("ünï\r\nb\nc".encode())) == ["ünï", "b", "c"]  # CRLF, no final newline
    (tmp_path / enc.DOC_IDS).write_text("a\nb\n\nc\n")
    with pytest.raises(ValueError, match=r"doc_ids.txt: line 3 is an empty document id"):
        enc.read_doc_ids(tmp_path)


def test_interrupted_encoding_resumes_to_same_embeddings(tmp_path, tiny_encoder, coll, reference):
    stats = build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40,
                               progress=False, stop_after_chunks=2)  # "killed" after 2 of 4 chunks
    assert stats["encoded_chunks"] == 2 and stats["remaining_chunks"] == 2
    (tmp_path / enc.CHUNKS / ".chunk-000002.npy.tmp-999").write_bytes(b"half-written")  # a killed write
    with pytest.raises(RuntimeError, match="2 chunk"):
        build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    assert not (tmp_path / enc.EMBEDDINGS).exists()  # nothing that looks complete
    stats = build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40, progress=False)
    assert (stats["skipped_chunks"], stats["encoded_chunks"]) == (2, 2)
    assert not list((tmp_path / enc.CHUNKS).glob(".*tmp*"))
    build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    assert np.array_equal(np.load(tmp_path / enc.EMBEDDINGS), np.load(reference / enc.EMBEDDINGS))


def test_sharded_equals_unsharded(tmp_path, tiny_encoder, coll, reference):
    for shard in (2, 0, 1):
        build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40,
                           shard=shard, num_shards=3, progress=False)
    build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    assert np.array_equal(np.load(tmp_path / enc.EMBEDDINGS), np.load(reference / enc.EMBEDDINGS))
    assert (tmp_path / "docs.jsonl").read_bytes() == (reference / "docs.jsonl").read_bytes()
    assert (tmp_path / "doc_ids.txt").read_text() == (reference / "doc_ids.txt").read_text()


def test_shard_plan_covers_every_chunk_once():
    plan = enc.ChunkPlan(num_docs=1000, chunk_size=64)
    for n in (1, 3, 7, 16, 20):
        got = [c for i in range(n) for c in plan.shard_chunks(i, n)]
        assert got == list(range(plan.num_chunks))
    with pytest.raises(ValueError, match="--shard"):
        plan.shard_chunks(3, 3)


def test_changed_settings_refused(tmp_path, tiny_encoder, coll):
    build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40, progress=False,
                       stop_after_chunks=1)
    with pytest.raises(RuntimeError, match="different encoding run"):
        build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=50, progress=False)


def test_float16_store(tmp_path, tiny_encoder, coll, reference):
    build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40, dtype="float16",
                       progress=False)
    build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    store = EmbeddingStore.open(tmp_path / enc.EMBEDDINGS)
    assert store.dtype == "float16" and store.nbytes == 150 * 64 * 2
    ref = np.load(reference / enc.EMBEDDINGS)
    np.testing.assert_allclose(store.array.astype(np.float32), ref, atol=2e-3)
    # width slicing reads in blocks and re-normalises
    rows = np.concatenate([b for _, b in store.blocks(block_rows=32, width=32)])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rows, truncate(ref, 32), atol=3e-3)


def test_cli_sharded_index_then_merge(tmp_path, tiny_bert_dir, data_dir, capsys):
    """`elasticdenser index` on a named collection: 2 shard workers, then --merge builds the indexes."""
    from elasticdenser.cli import main
    from elasticdenser.index import manifest as mf

    out = tmp_path / "exp"
    common = ["index", "nq-sample", "--data-dir", str(data_dir), "--out", str(out), "--model", str(tiny_bert_dir),
              "--chunk-size", "1500", "--dtype", "float16", "--no-progress"]
    for shard in ("1", "0"):
        assert main(common + ["--shard", shard, "--num-shards", "2"]) == 0
    assert "--merge" in capsys.readouterr().err and not (out / enc.EMBEDDINGS).exists()
    assert main(common + ["--merge", "--widths", "64,32", "--index-type", "32=HNSW16", "--remove-chunks"]) == 0
    m = mf.load(out)
    assert m["collection"] == {"name": "nq-sample", "num_docs": 4351} and m["embeddings"]["dtype"] == "float16"
    assert {w: i["factory"] for w, i in m["indexes"].items()} == {"64": "Flat", "32": "HNSW16"}
    assert not list((out / enc.CHUNKS).glob("chunk-*"))
    assert len(enc.read_doc_ids(out)) == 4351


def test_precomputed_embeddings_are_stored_not_recomputed(tmp_path, tiny_encoder, coll, reference):
    """The main job reuses the training stage's frozen document embeddings."""
    ref = np.load(reference / enc.EMBEDDINGS)
    with pytest.raises(ValueError, match="shape"):
        build.encode_stage(tiny_encoder, coll.corpus, tmp_path / "bad", collection="nq-small", progress=False,
                           precomputed=ref[:-1])
    marked = ref.copy()
    marked[:, 0] = np.arange(len(ref))  # not what the encoder would produce: proves nothing was re-encoded
    build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40, progress=False,
                       precomputed=marked)
    build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    assert np.array_equal(np.load(tmp_path / enc.EMBEDDINGS), marked)
    assert (tmp_path / "docs.jsonl").read_bytes() == (reference / "docs.jsonl").read_bytes()


def test_precision_is_recorded_and_never_mixed(tmp_path, tiny_encoder, coll, reference):
    """The precision a store was computed in is in its chunks' meta and its manifest; a resumed run
    in another precision is refused; runs from before precisions were recorded count as fp32."""
    import json

    meta_path = tmp_path / enc.CHUNKS / "meta.json"
    stats = build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40,
                               progress=False, precision="fp32", stop_after_chunks=1)
    assert stats["precision"] == "fp32" and json.loads(meta_path.read_text())["precision"] == "fp32"
    with pytest.raises(RuntimeError, match="different encoding run.*precision"):
        build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40,
                           progress=False, precision="bf16")
    old = json.loads(meta_path.read_text())
    del old["precision"]  # a meta.json written before 0.8.0
    meta_path.write_text(json.dumps(old))
    stats = build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40,
                               progress=False, precision="fp32")
    assert (stats["skipped_chunks"], stats["encoded_chunks"]) == (1, 3)
    build.merge_stage(tiny_encoder, tmp_path, collection="nq-small")
    from elasticdenser.index import manifest as mf

    assert mf.load(tmp_path)["embeddings"]["precision"] == "fp32"
    np.testing.assert_allclose(np.load(tmp_path / enc.EMBEDDINGS), np.load(reference / enc.EMBEDDINGS), atol=1e-4)
    bf = tmp_path / "bf16"
    stats = build.encode_stage(tiny_encoder, coll.corpus, bf, collection="nq-small", chunk_size=40,
                               progress=False, precision="bf16")
    build.merge_stage(tiny_encoder, bf, collection="nq-small")
    got, ref = np.load(bf / enc.EMBEDDINGS), np.load(reference / enc.EMBEDDINGS)
    assert stats["precision"] == mf.load(bf)["embeddings"]["precision"] == "bf16"
    assert (got * ref).sum(1).min() >= 0.99 and not np.array_equal(got, ref)


def test_cli_precision_flags():
    from elasticdenser.cli import build_parser

    parser = build_parser()
    for command in ("index", "pipeline"):
        base = [command, "nq-sample", "--out", "x"]
        assert parser.parse_args(base).precision == "auto"
        assert parser.parse_args(base + ["--precision", "fp32"]).precision == "fp32"
        assert parser.parse_args(base + ["--bf16"]).precision == "bf16"  # the old flag
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--precision", "fp16"])


def test_a_shard_removes_only_its_own_leftovers(tmp_path, tiny_encoder, coll):
    """A shard starting while another writes (torchrun ranks) must not delete the other's temp files."""
    chunks = tmp_path / enc.CHUNKS
    chunks.mkdir(parents=True)
    plan = enc.ChunkPlan(num_docs=150, chunk_size=40)
    mine, theirs = (chunks / f".{enc.chunk_path(tmp_path, plan.shard_chunks(s, 2)[0], '.npy').name}.tmp-99{s}"
                    for s in (0, 1))
    meta = chunks / ".meta.json.tmp-997"
    for p in (mine, theirs, meta):
        p.write_bytes(b"half-written")
    build.encode_stage(tiny_encoder, coll.corpus, tmp_path, collection="nq-small", chunk_size=40, shard=0,
                       num_shards=2, progress=False)
    assert not mine.exists() and theirs.exists() and meta.exists()
