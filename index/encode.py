"""Corpus encoding: once, by the full model, in chunks that make it sharded and resumable.

The corpus is cut into fixed chunks of ``chunk_size`` consecutive documents (chunk ``j`` holds
positions ``[j*chunk_size, (j+1)*chunk_size)``). Shard ``i`` of ``n`` owns a contiguous range of
chunks, so a sharded run computes exactly the batches an unsharded one does, and the merged
store is identical. Each finished chunk is written atomically to ``chunks/chunk-JJJJJJ.npy``
(+ ``.jsonl`` with its passages, + ``.sha256``, the digest of those passage bytes, written last).
A chunk is reused only when its digest matches the corpus as it is now and its vectors load with
the right shape, so a killed run restarts at the first missing chunk, an edited corpus re-encodes
exactly the chunks whose ids or text changed, and a torn file is re-encoded instead of trusted.
``merge`` assembles ``embeddings.npy``, ``doc_ids.txt`` and the passage store once every chunk
exists, and returns the digests that tie the manifest to this content.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from elasticdenser.atomic import atomic_path, clean_stale_tmp, write_json, write_text
from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.index import docstore
from elasticdenser.index.store import EmbeddingStore, check_dtype

__all__ = [
    "CHUNKS",
    "EMBEDDINGS",
    "DOC_IDS",
    "DEFAULT_CHUNK_SIZE",
    "ChunkPlan",
    "chunk_path",
    "chunk_lines",
    "chunk_is_current",
    "encode_texts",
    "encode_corpus",
    "missing_chunks",
    "chunks_digest",
    "merge_chunks",
    "DocIds",
    "read_doc_ids",
]

log = logging.getLogger(__name__)

CHUNKS = "chunks"
EMBEDDINGS = "embeddings.npy"
DOC_IDS = "doc_ids.txt"
DEFAULT_CHUNK_SIZE = 16384


@dataclass(frozen=True)
class ChunkPlan:
    num_docs: int
    chunk_size: int

    @property
    def num_chunks(self) -> int:
        return max(1, math.ceil(self.num_docs / self.chunk_size)) if self.num_docs else 0

    def bounds(self, chunk: int) -> "tuple[int, int]":
        lo = chunk * self.chunk_size
        return lo, min(lo + self.chunk_size, self.num_docs)

    def shard_chunks(self, shard: int, num_shards: int) -> range:
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise InvalidInputError(f"--shard must be in 0..{num_shards - 1} (got shard {shard} of {num_shards})")
        c = self.num_chunks
        return range(shard * c // num_shards, (shard + 1) * c // num_shards)


def chunk_path(exp_dir: Path, chunk: int, suffix: str) -> Path:
    return Path(exp_dir) / CHUNKS / f"chunk-{chunk:06d}{suffix}"


def _meta(exp_dir: Path, plan: ChunkPlan, encoder, dtype: str, collection: str, precision: str) -> dict:
    return {
        "num_docs": plan.num_docs,
        "chunk_size": plan.chunk_size,
        "model_fingerprint": encoder.fingerprint(),
        "dim": int(encoder.space.hidden_size),
        "dtype": dtype,
        "precision": precision,
        "collection": collection,
    }


#: what must agree for existing chunks to be reused at all (the corpus itself may change); a store
#: never mixes vectors computed in two precisions
_RUN_KEYS = ("model_fingerprint", "dim", "dtype", "chunk_size", "precision")
#: what a key missing from an older run's meta.json was (runs before 0.8.0 were all fp32)
_RUN_DEFAULTS = {"precision": "fp32"}


def _check_or_write_meta(exp_dir: Path, meta: dict) -> None:
    path = Path(exp_dir) / CHUNKS / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k, _RUN_DEFAULTS.get(k)), meta[k]) for k in _RUN_KEYS
                if old.get(k, _RUN_DEFAULTS.get(k)) != meta[k]}
        if diff:
            raise StateError(
                f"{path} belongs to a different encoding run ({diff}); "
                "use a fresh --out directory or delete the chunks/ folder"
            )
        if old == meta:
            return
    write_json(path, meta)


def chunk_lines(docs) -> bytes:
    """The passage bytes of a chunk (its ``.jsonl``): what its digest is taken over."""
    return b"".join(docstore.doc_line(d) for d in docs)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_is_current(exp_dir: Path, chunk: int, digest: str, rows: int, dim: int) -> bool:
    """Whether chunk ``chunk`` holds the vectors of exactly these passages: digest, then shape."""
    sha = chunk_path(exp_dir, chunk, ".sha256")
    if not sha.is_file() or sha.read_text().strip() != digest or not chunk_path(exp_dir, chunk, ".jsonl").is_file():
        return False
    try:
        shape = np.load(str(chunk_path(exp_dir, chunk, ".npy")), mmap_mode="r").shape
    except (OSError, ValueError, EOFError):  # missing or torn: encode it again
        return False
    return shape == (rows, dim)


def _length_sorted_batches(texts: Sequence[str], batch_size: int) -> List[np.ndarray]:
    """Indices of ``texts`` cut into batches of similar length (longest first), so padding is minimal."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_texts(encoder, texts: Sequence[str], batch_size: int = 64, bf16: bool = False,
                 max_length: Optional[int] = None, on_batch: Optional[Callable[[int], None]] = None,
                 backend: Optional[str] = None) -> np.ndarray:
    """Full-model, full-width embeddings of ``texts`` (float32), computed in length-sorted batches
    on the encoder path ``backend`` (:meth:`ElasticEncoder.encode`; the CLI passes ``"auto"``)."""
    dim = int(encoder.space.hidden_size)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for idx in _length_sorted_batches(texts, batch_size):
        emb = encoder.encode([texts[i] for i in idx], point=None, batch_size=len(idx), max_length=max_length, bf16=bf16,
                             backend=backend)
        out[idx] = emb
        if on_batch:
            on_batch(len(idx))
    return out


def encode_corpus(encoder, corpus, exp_dir: "str | os.PathLike", *, shard: int = 0, num_shards: int = 1,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 64, dtype: str = "float32",
                  bf16: bool = False, max_length: Optional[int] = None, collection: str = "",
                  progress: bool = True, stop_after_chunks: Optional[int] = None,
                  precomputed: Optional[np.ndarray] = None, backend: Optional[str] = None, force: bool = False,
                  precision: Optional[str] = None) -> dict:
    """Encode this shard's missing chunks; returns counts ``{"encoded", "skipped", "seconds", ...}``.

    ``precision`` (``"auto"``, ``"fp32"``, ``"bf16"``; the CLI's ``--precision``) chooses the
    encoder path by :func:`elasticdenser.model.fastpath.document_path` and overrides ``backend``
    and ``bf16``; without it they are used as given. The precision used is recorded in the chunks'
    ``meta.json`` and must match for existing chunks to be reused.
    ``stop_after_chunks`` (tests and benchmarks) stops after that many new chunks, as if killed.
    ``force``: encode every chunk of this shard again, current or not.
    ``precomputed``: full-width embeddings of the whole corpus, in corpus order, that ``encoder``
    already computed (e.g. the training stage's frozen document embeddings): they are stored as
    they are instead of being encoded a second time.
    """
    if precomputed is not None and precomputed.shape != (len(corpus), encoder.space.hidden_size):
        raise InvalidInputError(f"precomputed embeddings have shape {precomputed.shape}, expected "
                         f"({len(corpus)}, {encoder.space.hidden_size}) for this corpus and model")
    check_dtype(dtype)
    from elasticdenser.model import fastpath

    if precision is not None:
        backend, bf16, used = fastpath.document_path(precision, encoder.device)
    else:
        if (backend or "").lower() == "auto":
            backend = fastpath.resolve_backend("auto")  # the exact one: documents never follow the query rule
        used = "bf16" if bf16 else (fastpath.openvino_precision() if backend == "openvino" else "fp32")
    if precomputed is not None:
        used = "fp32"  # vectors the caller computed (the training stage's eager fp32 ones)
    exp_dir = Path(exp_dir)
    (exp_dir / CHUNKS).mkdir(parents=True, exist_ok=True)
    if chunk_size < 1:
        raise InvalidInputError(f"chunk size must be >= 1, got {chunk_size}")
    plan = ChunkPlan(len(corpus), int(chunk_size))
    mine = plan.shard_chunks(shard, num_shards)
    # only this shard's leftovers: other shards (torchrun ranks) may be writing theirs right now
    clean_stale_tmp(exp_dir / CHUNKS, names=[chunk_path(exp_dir, c, s).name for c in mine
                                            for s in (".npy", ".jsonl", ".sha256")])
    _check_or_write_meta(exp_dir, _meta(exp_dir, plan, encoder, dtype, collection, used))
    dim = int(encoder.space.hidden_size)
    digests = {}
    for c in mine:
        lo, hi = plan.bounds(c)
        digests[c] = _digest(chunk_lines(corpus[p] for p in range(lo, hi)))
    todo = [c for c in mine
            if force or not chunk_is_current(exp_dir, c, digests[c], plan.bounds(c)[1] - plan.bounds(c)[0], dim)]
    todo_docs = sum(plan.bounds(c)[1] - plan.bounds(c)[0] for c in todo)
    bar = None
    if progress and todo_docs:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo_docs, unit="passage", desc=f"encode shard {shard}/{num_shards}", smoothing=0.1)
    t0 = time.perf_counter()
    done = 0
    try:
        for c in todo:
            if stop_after_chunks is not None and done >= stop_after_chunks:
                break
            lo, hi = plan.bounds(c)
            docs = [corpus[p] for p in range(lo, hi)]
            if precomputed is not None:
                emb = np.asarray(precomputed[lo:hi])
                if bar:
                    bar.update(hi - lo)
            else:
                emb = encode_texts(encoder, [d.contents for d in docs], batch_size=batch_size, bf16=bf16,
                                   max_length=max_length, on_batch=bar.update if bar else None, backend=backend)
            # passages, embeddings, then the digest: a chunk counts as done once its digest matches
            chunk_path(exp_dir, c, ".sha256").unlink(missing_ok=True)
            with atomic_path(chunk_path(exp_dir, c, ".jsonl")) as tmp:
                tmp.write_bytes(chunk_lines(docs))
            with atomic_path(chunk_path(exp_dir, c, ".npy")) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb.astype(dtype))
            write_text(chunk_path(exp_dir, c, ".sha256"), digests[c] + "\n")
            done += 1
    finally:
        if bar:
            bar.close()
    return {"encoded_chunks": done, "skipped_chunks": len(mine) - len(todo), "shard_chunks": len(mine),
            "remaining_chunks": len(todo) - done, "seconds": time.perf_counter() - t0,
            "precision": used, "backend": "precomputed" if precomputed is not None else (backend or "eager"),
            "passages": sum(plan.bounds(c)[1] - plan.bounds(c)[0] for c in todo[:done])}


def _read_meta(exp_dir: Path) -> dict:
    meta_path = exp_dir / CHUNKS / "meta.json"
    if not meta_path.is_file():
        raise MissingFileError(f"{meta_path} not found: no encoding run in {exp_dir}")
    return json.loads(meta_path.read_text())


def missing_chunks(exp_dir: "str | os.PathLike") -> List[int]:
    """Chunks of the current encoding run that are not finished (no digest, or no vectors)."""
    exp_dir = Path(exp_dir)
    meta = _read_meta(exp_dir)
    plan = ChunkPlan(meta["num_docs"], meta["chunk_size"])
    return [c for c in range(plan.num_chunks)
            if not (chunk_path(exp_dir, c, ".sha256").is_file() and chunk_path(exp_dir, c, ".npy").is_file())]


def chunks_digest(exp_dir: "str | os.PathLike") -> Optional[str]:
    """The digest of the whole encoded corpus (over every chunk's digest, in order), or None when
    ``chunks/`` is gone (merged with ``--remove-chunks``) or incomplete."""
    exp_dir = Path(exp_dir)
    if not (exp_dir / CHUNKS / "meta.json").is_file() or missing_chunks(exp_dir):
        return None
    meta = _read_meta(exp_dir)
    plan = ChunkPlan(meta["num_docs"], meta["chunk_size"])
    parts = [chunk_path(exp_dir, c, ".sha256").read_text().strip() for c in range(plan.num_chunks)]
    return _digest("\n".join(parts).encode())


def merge_chunks(exp_dir: "str | os.PathLike", remove_chunks: bool = False) -> dict:
    """Assemble ``embeddings.npy``, ``doc_ids.txt`` and the passage store from every chunk.

    Streams chunk by chunk into a memory-mapped temporary file, then renames; refuses if any
    chunk is missing (naming the shards still to run).
    """
    exp_dir = Path(exp_dir)
    missing = missing_chunks(exp_dir)
    meta = _read_meta(exp_dir)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StateError(f"cannot merge {exp_dir}: {len(missing)} chunk(s) not encoded yet ({shown}); "
                           "run the remaining shards first")
    plan = ChunkPlan(meta["num_docs"], meta["chunk_size"])
    with atomic_path(exp_dir / EMBEDDINGS) as tmp:
        store = EmbeddingStore.create(tmp, plan.num_docs, meta["dim"], meta["dtype"])
        for c in range(plan.num_chunks):
            lo, hi = plan.bounds(c)
            path = chunk_path(exp_dir, c, ".npy")
            try:
                block = np.load(str(path), mmap_mode="r")
            except (OSError, ValueError, EOFError) as exc:
                raise StateError(f"{path} is damaged ({exc}); re-run `elasticdenser index` to encode it again") from None
            if block.shape != (hi - lo, meta["dim"]):
                raise StateError(f"{path} has shape {block.shape}, expected {(hi - lo, meta['dim'])}; "
                                 "re-run `elasticdenser index` to encode it again")
            store.array[lo:hi] = block
        store.flush()
        del store

    def lines():
        for c in range(plan.num_chunks):
            with open(chunk_path(exp_dir, c, ".jsonl"), "rb") as fh:
                yield from fh

    n = docstore.write_docstore(exp_dir, lines())
    if n != plan.num_docs:
        raise StateError(f"passage store has {n} lines, expected {plan.num_docs}")

    ids_digest = hashlib.sha256()
    content = chunks_digest(exp_dir)
    with atomic_path(exp_dir / DOC_IDS) as tmp:
        with open(tmp, "wb") as fh:
            for line in lines():
                row = (json.loads(line)["id"] + "\n").encode("utf-8")
                ids_digest.update(row)
                fh.write(row)
    if remove_chunks:
        for c in range(plan.num_chunks):
            for suffix in (".npy", ".jsonl", ".sha256"):
                chunk_path(exp_dir, c, suffix).unlink()
    return {**meta, "content_sha256": content, "doc_ids_sha256": ids_digest.hexdigest()}


class DocIds(SequenceABC):
    """The ids of ``doc_ids.txt`` by row, kept as one bytes buffer plus line offsets.

    A list of 21M Python strings (the DPR Wikipedia corpus) holds ~1.4 GiB; this keeps the file's
    bytes plus 4 per row and decodes an id only when a hit needs it (``benchmarks/bench_doc_ids.py``).
    """

    def __init__(self, data: bytes, source: str = DOC_IDS):
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self._data = data
        # only the newline positions are kept (4 bytes a row below 2 GiB): line i is (ends[i-1], ends[i])
        self._ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10).astype(
            np.int32 if len(data) < 2**31 else np.int64)
        empty = np.flatnonzero(np.diff(self._ends, prepend=-1) == 1)
        if empty.size:
            raise InvalidInputError(f"{source}: line {int(empty[0]) + 1} is an empty document id")

    def __len__(self) -> int:
        return int(self._ends.size)

    def sha256(self) -> str:
        """Digest of the ids as the merge wrote them (one per line), to tie the file to its manifest."""
        return hashlib.sha256(self._data).hexdigest()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"document row {i} out of range ({len(self)} documents)")
        start = int(self._ends[i - 1]) + 1 if i else 0
        return self._data[start : int(self._ends[i])].decode("utf-8").rstrip("\r")

    def __eq__(self, other) -> bool:
        return isinstance(other, SequenceABC) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"DocIds({len(self)} documents)"


def read_doc_ids(exp_dir: "str | os.PathLike") -> DocIds:
    path = Path(exp_dir) / DOC_IDS
    if not path.is_file():
        raise MissingFileError(f"{path} not found: run `elasticdenser index` (encode + merge) first")
    return DocIds(path.read_bytes(), str(path))
