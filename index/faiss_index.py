"""One FAISS index per embedding width, built from the memory-mapped store.

The index for width ``d`` holds the first ``d`` dimensions of every document embedding,
re-normalised, under inner product. Its type is a FAISS factory string (``Flat`` by default;
``HNSW32``, ``IVF4096,PQ96`` ... work too; untrained types are trained on a sample). Files are
written with ``faiss.write_index`` (atomically), so plain ``faiss.read_index`` opens them.

A FAISS GPU index is used automatically when ``faiss-gpu`` and a GPU are present.

BLAS threshold: FAISS chooses between its own sequential kernel and a BLAS product by comparing
``distance_compute_blas_threshold`` with the number of query rows (older releases, shipped value 20)
or with query rows x width (1.15 here, shipped value 128,000). The shipped 128,000 sends every
batch of fewer than 128,000 / width queries to the sequential kernel, measured 5-17x slower for
~1000-query batches at d <= 96; but the BLAS path packs the stored vectors on every call, which
costs a single query 0.15-0.3 ms on nq-sample's 4,351 vectors and more on larger corpora, where the
sequential kernel is 2x faster for one query (BENCHMARKS.md). ``tune_faiss`` therefore sets the
threshold so that one query runs sequentially and batches use BLAS.

Second trap: ``index_factory("IVF...,PQ...")`` enables polysemous training, which made IVF-PQ
training take minutes even on 4k vectors; ``new_index`` turns it off.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from elasticdenser.atomic import atomic_path
from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.index.store import EmbeddingStore

__all__ = [
    "BLAS_THRESHOLD",
    "DEFAULT_FACTORY",
    "DEFAULT_TRAIN_SIZE",
    "index_file",
    "tune_faiss",
    "SINGLE_THREAD_WORK",
    "search_threads",
    "gpu_available",
    "to_gpu",
    "to_cpu",
    "parse_index_types",
    "new_index",
    "build_index",
    "save_index",
    "load_index",
    "set_search_params",
    "default_search_params",
    "search",
]

log = logging.getLogger(__name__)

#: the threshold for FAISS releases that compare it with the number of query rows: one query
#: runs sequentially, two or more use BLAS
BLAS_THRESHOLD = 2
DEFAULT_FACTORY = "Flat"
DEFAULT_TRAIN_SIZE = 262144
_shipped_threshold: Optional[int] = None
_widest = 0
_tune_lock = threading.Lock()


def index_file(width: int) -> str:
    return f"index-d{int(width)}.faiss"


def blas_threshold_counts_products() -> bool:
    """Whether this FAISS compares its BLAS threshold with query rows x width (1.15's rule) rather
    than with query rows. Read from the value FAISS ships, captured before ours replaces it: the
    rows rule shipped 20."""
    global _shipped_threshold
    if _shipped_threshold is None:
        import faiss

        _shipped_threshold = int(faiss.cvar.distance_compute_blas_threshold)
    return _shipped_threshold != 20


def tune_faiss(width: int) -> None:
    """Make a single query of ``width`` (and of every width tuned before in this process) take
    FAISS's sequential kernel, and batches its BLAS product.

    With rows x width counted, the threshold is the widest width tuned + 1, so at width ``w``
    up to ``widest // w`` queries stay sequential (with the default widths 384 / 256 / 192: at most
    two, level with BLAS in BENCHMARKS.md). It is process-wide and only grows, so tuning a narrow
    width never sends a single query of a wider one back to BLAS. (FAISS 1.15 still takes BLAS for
    a query over a corpus of >= 10,000 vectors searched on several OpenMP threads, see
    :func:`search_threads`.)"""
    import faiss

    global _widest
    with _tune_lock:
        products = blas_threshold_counts_products()
        _widest = max(_widest, int(width))
        faiss.cvar.distance_compute_blas_threshold = _widest + 1 if products else BLAS_THRESHOLD


def gpu_available() -> bool:
    import faiss

    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken GPU builds
        return False


_GPU_RES = None


def to_gpu(index):
    """The GPU version of ``index`` when possible, else ``index`` unchanged (e.g. HNSW, or no GPU)."""
    global _GPU_RES
    if not gpu_available():
        return index
    import faiss

    try:
        if _GPU_RES is None:
            _GPU_RES = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = True  # PQ codes / flat vectors in fp16 on the GPU
        return faiss.index_cpu_to_gpu(_GPU_RES, 0, index, co)
    except Exception as exc:  # index type without a GPU implementation
        log.info("keeping %s on CPU: %s", type(index).__name__, exc)
        return index


def to_cpu(index):
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


def parse_index_types(specs: Optional[Iterable[str]], widths: Iterable[int]) -> Dict[int, str]:
    """``["Flat"]`` or ``["384=HNSW32", "96=Flat", "IVF1024,PQ48"]`` -> ``{width: factory}``.

    An entry without ``WIDTH=`` is the default for every width not named explicitly.
    """
    widths = [int(w) for w in widths]
    default, per = DEFAULT_FACTORY, {}
    for spec in specs or []:
        spec = spec.strip()
        head, sep, rest = spec.partition("=")
        if sep and head.strip().isdigit():
            w = int(head)
            if w not in widths:
                raise InvalidInputError(f"--index-type {spec!r}: width {w} is not one of the indexed widths {widths}")
            per[w] = rest.strip()
        else:
            default = spec
    return {w: per.get(w, default) for w in widths}


def new_index(width: int, factory: str):
    import faiss

    try:
        index = faiss.index_factory(int(width), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise InvalidInputError(f"FAISS cannot build index type {factory!r} at width {width}: {reason}") from None
    # The factory turns on polysemous training for IVF-PQ: a simulated-annealing pass that is only
    # useful for polysemous (Hamming) filtering, which we never use, and that dominated training time
    # (minutes even at 4k vectors on 2 cores). Plain PQ codes are identical in quality without it.
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
    return index


def build_index(store: EmbeddingStore, width: int, factory: str = DEFAULT_FACTORY, *, train_size: int = DEFAULT_TRAIN_SIZE,
                block_rows: int = 65536, use_gpu: Optional[bool] = None, seed: int = 0, normalize: bool = True,
                basis: Optional[np.ndarray] = None):
    """A CPU FAISS index over ``store``'s rows cut to ``width`` by the width rule (re-normalised
    when the model normalises, ``normalize``; in the query model's output ``basis``), trained if
    the factory needs it."""
    tune_faiss(width)
    index = new_index(width, factory)
    use_gpu = gpu_available() if use_gpu is None else use_gpu
    work = to_gpu(index) if use_gpu else index
    if not work.is_trained:
        n = min(len(store), int(train_size))
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(store), size=n, replace=False)) if n < len(store) else np.arange(len(store))
        t0 = time.perf_counter()
        work.train(store.rows(sample, width, normalize, basis))
        log.info("trained %s at d=%d on %d vectors in %.1fs", factory, width, n, time.perf_counter() - t0)
    for _, block in store.blocks(block_rows, width=width, normalize=normalize, basis=basis):
        work.add(block)
    return to_cpu(work)


def save_index(index, path: "str | os.PathLike") -> int:
    """``faiss.write_index`` atomically; returns the file size in bytes."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(to_cpu(index), str(tmp))
    return Path(path).stat().st_size


def load_index(path: "str | os.PathLike", use_gpu: Optional[bool] = None, mmap: bool = False):
    import faiss

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"index file {path} not found (build it with `elasticdenser index`)")
    flags = faiss.IO_FLAG_MMAP if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:  # FAISS says which read failed, not which file
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise StateError(f"{path} is not a readable FAISS index (truncated or damaged: {reason}); "
                         "rebuild it with `elasticdenser index ... --force`") from None
    tune_faiss(index.d)
    use_gpu = gpu_available() if use_gpu is None else use_gpu
    return to_gpu(index) if use_gpu else index


def set_search_params(index, params: Optional[str]) -> None:
    """Apply a FAISS parameter string such as ``"nprobe=64"`` or ``"efSearch=128"``."""
    if not params:
        return
    import faiss

    on_gpu = "Gpu" in type(index).__name__ and hasattr(faiss, "GpuParameterSpace")
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    space.set_index_parameters(index, params)


def default_search_params(factory: str) -> str:
    f = factory.upper()
    if "IVF" in f:
        return "nprobe=64"
    if "HNSW" in f:
        return "efSearch=128"
    return ""


#: a search smaller than this (query rows x stored vectors x width, multiply-adds) runs on one
#: OpenMP thread: a parallel region costs more than it saves at that size, and when another process
#: or request holds a core, FAISS's threads wait for it at every barrier (BENCHMARKS.md)
SINGLE_THREAD_WORK = 1 << 27


def search_threads(index, n: int) -> Optional[int]:
    """1 for a search whose work is below :data:`SINGLE_THREAD_WORK` (or an index that is not
    flat and a batch of one), None (FAISS's own thread count) for larger ones."""
    import faiss

    if isinstance(index, faiss.IndexFlat):  # exact: the work is known
        return 1 if n * int(index.ntotal) * int(index.d) < SINGLE_THREAD_WORK else None
    return 1 if n <= 1 else None


def search(index, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of shape (n, k); ids are -1 where fewer than ``k`` results exist. Small
    searches run on the calling thread only (:func:`search_threads`; OpenMP's thread count is a
    per-thread setting, so concurrent searches do not see each other's)."""
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise InvalidInputError(f"query embeddings have shape {q.shape}, the index expects width {index.d}")
    threads = search_threads(index, len(q))
    if threads is None or "Gpu" in type(index).__name__:
        return index.search(q, int(k))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return index.search(q, int(k))
    finally:
        faiss.omp_set_num_threads(before)
