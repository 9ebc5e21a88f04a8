"""FAISS index per width: factory types, training, plain-faiss files, the BLAS threshold, manifest."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from elasticdenser.index import faiss_index as fi
from elasticdenser.index import manifest as mf
from elasticdenser.index.store import EmbeddingStore
from elasticdenser.operating_point import truncate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("store") / "embeddings.npy"
    s = EmbeddingStore.create(path, 3000, 64, "float32")
    centers = rng.standard_normal((40, 64))
    s.array[:] = (centers[rng.integers(0, 40, 3000)] + 0.5 * rng.standard_normal((3000, 64))).astype(np.float32)
    s.flush()
    return EmbeddingStore.open(path)


def _exact(store, width, q, k):
    docs = truncate(np.asarray(store.array), width)
    return np.argsort(-(q @ docs.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,PQ16x4"])
def test_index_types_per_width(tmp_path, store, factory):
    rng = np.random.default_rng(1)
    for width in (64, 32):
        index = fi.build_index(store, width, factory, train_size=1000, block_rows=700)
        assert index.ntotal == 3000 and index.d == width and index.metric_type == 0  # METRIC_INNER_PRODUCT
        fi.set_search_params(index, fi.default_search_params(factory))
        q = truncate(np.asarray(store.array[:20]) + 0.3 * rng.standard_normal((20, 64)), width)
        _, ids = fi.search(index, q, 10)
        exact = _exact(store, width, q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        assert recall >= {"Flat": 1.0, "HNSW16": 0.9, "IVF16,PQ16x4": 0.3}[factory], recall


def test_file_opens_with_plain_faiss_and_gives_identical_results(tmp_path, store):
    index = fi.build_index(store, 32, "Flat")
    path = tmp_path / fi.index_file(32)
    fi.save_index(index, path)
    q = truncate(np.random.default_rng(2).standard_normal((5, 32)), 32)
    np.save(tmp_path / "q.npy", q)
    _, ours = fi.search(fi.load_index(path), q, 7)
    code = ("import sys, faiss, numpy as np; assert 'elasticdenser' not in sys.modules; "
            f"ix = faiss.read_index({str(path)!r}); q = np.load({str(tmp_path / 'q.npy')!r}); "
            "print(ix.search(q, 7)[1].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ours.tolist()


def test_building_an_index_sends_one_query_to_the_sequential_kernel_and_batches_to_blas(store, monkeypatch, tmp_path):
    """FAISS's shipped threshold (128,000 query rows x width in 1.15) sends every realistic batch to
    its slow sequential kernel (18x slower at d=96), and a threshold that sends everything to BLAS
    costs a single query ~0.2 ms of packing (BENCHMARKS.md). Building or loading through our path
    must give one query the sequential kernel and a batch BLAS, and both must agree."""
    import faiss

    products = fi.blas_threshold_counts_products()  # read from what FAISS shipped, before it is overwritten below
    shipped = faiss.cvar.distance_compute_blas_threshold
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 128000)  # restored afterwards
    monkeypatch.setattr(fi, "_widest", 0)
    index = fi.build_index(store, 32, "Flat")
    threshold = faiss.cvar.distance_compute_blas_threshold
    if products:
        assert 32 < threshold <= 2 * 32  # one row x 32 below it, two rows x 32 not
    else:
        assert threshold == fi.BLAS_THRESHOLD == 2
    fi.save_index(index, tmp_path / "i.faiss")
    faiss.cvar.distance_compute_blas_threshold = shipped
    monkeypatch.setattr(fi, "_widest", 0)  # a process that only loads indexes (a Searcher) must be tuned too
    assert fi.load_index(tmp_path / "i.faiss").d == 32
    assert faiss.cvar.distance_compute_blas_threshold == threshold
    q = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    batch_scores, batch_ids = fi.search(index, q, 5)
    for i in range(len(q)):
        scores, ids = fi.search(index, q[i : i + 1], 5)
        assert ids[0].tolist() == batch_ids[i].tolist()
        np.testing.assert_allclose(scores[0], batch_scores[i], rtol=1e-5, atol=1e-5)
    fi.tune_faiss(16)  # a narrower width never lowers it
    assert faiss.cvar.distance_compute_blas_threshold == threshold


def test_parse_index_types():
    assert fi.parse_index_types(None, [384, 96]) == {384: "Flat", 96: "Flat"}
    assert fi.parse_index_types(["HNSW32", "96=IVF64,PQ12"], [384, 96]) == {384: "HNSW32", 96: "IVF64,PQ12"}
    with pytest.raises(ValueError, match="width 48"):
        fi.parse_index_types(["48=Flat"], [384, 96])
    with pytest.raises(ValueError, match="FAISS cannot build"):
        fi.new_index(96, "NoSuchIndex")


def test_missing_index_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="elasticdenser index"):
        fi.load_index(tmp_path / "index-d96.faiss")


def test_built_indexes_are_cpu_indexes_and_move_to_a_gpu_only_if_there_is_one(store):
    index = fi.build_index(store, 16, "Flat")
    assert "Gpu" not in type(index).__name__  # what is saved is always a CPU index
    moved = fi.to_gpu(index)
    if fi.gpu_available():
        assert "Gpu" in type(moved).__name__ and moved.ntotal == index.ntotal
    else:
        assert moved is index


def test_manifest_refuses_another_model():
    class Fake:
        def __init__(self, fp):
            self._fp = fp

        def fingerprint(self):
            return self._fp

    m = {"model": {"fingerprint": "a" * 64}, "collection": {"name": "x"}}
    assert mf.check_model(m, Fake("a" * 64)) is None
    with pytest.raises(mf.ManifestMismatchError, match="does not match"):
        mf.check_model(m, Fake("b" * 64))
    assert "does not match" in mf.check_model(m, Fake("b" * 64), allow_mismatch=True)
    # a trained experiment: queries need the query model; the document tower is not accepted in its place
    m["document_model"] = {"fingerprint": "d" * 64}
    with pytest.raises(mf.ManifestMismatchError, match="document tower"):
        mf.check_model(m, Fake("d" * 64))
    assert mf.check_model(m, Fake("d" * 64), role="document") is None
    assert mf.check_model(m, Fake("a" * 64)) is None
    with pytest.raises(mf.ManifestMismatchError):
        mf.check_model(m, Fake("b" * 64))


def test_small_searches_run_on_one_thread_and_leave_the_thread_setting_as_it_was():
    import faiss

    from elasticdenser.index import faiss_index as fi

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2000, 64)).astype("float32")
    flat = faiss.IndexFlatIP(64)
    flat.add(xb)
    big = fi.SINGLE_THREAD_WORK // (2000 * 64) + 1  # the first batch size past the single-thread rule
    assert fi.search_threads(flat, 1) == 1 and fi.search_threads(flat, big - 1) == 1
    assert fi.search_threads(flat, big) is None
    hnsw = faiss.IndexHNSWFlat(64, 8)
    hnsw.add(xb)
    assert fi.search_threads(hnsw, 1) == 1 and fi.search_threads(hnsw, 2) is None
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        q = rng.standard_normal((8, 64)).astype("float32")
        scores, ids = fi.search(flat, q, 5)
        assert faiss.omp_get_max_threads() == 2  # restored after the one-thread search
        ref_scores, ref_ids = flat.search(q, 5)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    finally:
        faiss.omp_set_num_threads(before)
