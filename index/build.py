"""The indexing stages over an experiment directory: save model, encode (sharded), merge, index.

Each stage is idempotent: it skips work whose result already exists, so re-running a killed
``elasticdenser index`` picks up where it stopped.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from elasticdenser.atomic import atomic_dir, tmp_name
from elasticdenser.errors import InvalidInputError
from elasticdenser.index import encode as enc
from elasticdenser.index import faiss_index as fi
from elasticdenser.index import manifest as mf
from elasticdenser.index.store import EmbeddingStore

__all__ = ["MODEL_DIR", "save_model", "record_models", "query_basis", "encode_stage", "merge_stage", "index_stage",
           "build_experiment"]

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def save_model(encoder, exp_dir: "str | os.PathLike") -> Path:
    """``encoder.save_pretrained(exp_dir/model)`` via a temporary folder (skipped if present)."""
    target = Path(exp_dir) / MODEL_DIR
    if target.is_dir():
        return target
    tmp = tmp_name(Path(exp_dir) / MODEL_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another shard worker saved it first: keep theirs
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def record_models(exp_dir: "str | os.PathLike", query_encoder, document_encoder, *,
                  model_dir: "str | os.PathLike | None" = None, replace: bool = True) -> None:
    """Make ``query_encoder`` the experiment's query model (``EXP/model``) and, when the documents
    were encoded by another model (a trained model's document tower), name both in the manifest.

    ``replace``: an experiment whose query model is another one gets this one (``index --merge
    --model TRAINED`` switches an indexed corpus to a trained model, no re-encoding); without it
    the experiment's model is kept, and said so. ``model_dir``: where ``query_encoder`` was loaded
    from; its document-tower record travels into ``EXP/model``, which stays portable.
    """
    from elasticdenser.model.towers import copy_document_tower

    m = mf.load(exp_dir)
    target = Path(exp_dir) / MODEL_DIR
    if target.is_dir() and m.get("model", {}).get("fingerprint") != query_encoder.fingerprint():
        if not replace:
            log.info("%s keeps its query model %s", exp_dir, target)
            return
        with atomic_dir(target) as tmp:
            query_encoder.save_pretrained(tmp)
            if model_dir is not None:
                copy_document_tower(model_dir, tmp)
    elif not target.is_dir():
        save_model(query_encoder, exp_dir)
        if model_dir is not None:
            copy_document_tower(model_dir, target)
    sections = {"model": mf.model_section(query_encoder), "points": [p.name for p in query_encoder.default_points()]}
    if document_encoder is not query_encoder:
        sections["document_model"] = mf.model_section(document_encoder)
    mf.update(exp_dir, **sections)


def query_basis(exp_dir: "str | os.PathLike", manifest: dict):
    """``(basis, digest)`` of the experiment's query model (``(None, None)``: plain truncation).

    The indexes of an experiment are cut in the output basis of its query model (``EXP/model``),
    so a query and the documents it is compared with are truncated alike."""
    digest = manifest.get("model", {}).get("output_basis")
    if not digest:
        return None, None
    from elasticdenser.model.loading import ELASTIC_CONFIG_NAME, read_json, read_output_basis

    model_dir = Path(exp_dir) / MODEL_DIR
    config = read_json(model_dir / ELASTIC_CONFIG_NAME) or {}
    if (config.get("output_basis") or {}).get("sha256") != digest:
        raise mf.ManifestMismatchError(f"{model_dir} is not the query model {Path(exp_dir) / mf.MANIFEST} names "
                                       "(its output basis differs); run `elasticdenser index --merge --model MODEL` again")
    return read_output_basis(model_dir, config), digest


def encode_stage(encoder, corpus, exp_dir, *, collection: str, shard: int = 0, num_shards: int = 1,
                 chunk_size: int = enc.DEFAULT_CHUNK_SIZE, batch_size: int = 64, dtype: str = "float32",
                 bf16: bool = False, progress: bool = True, save_model_dir: bool = True, **kw) -> dict:
    if len(corpus) == 0:
        raise InvalidInputError(f"collection {collection!r} has no documents to encode")
    if (Path(exp_dir) / mf.MANIFEST).is_file():  # adding to an experiment: only with its document tower
        mf.check_model(mf.load(exp_dir), encoder, role="document")
    if save_model_dir:
        save_model(encoder, exp_dir)
    return enc.encode_corpus(encoder, corpus, exp_dir, shard=shard, num_shards=num_shards, chunk_size=chunk_size,
                             batch_size=batch_size, dtype=dtype, bf16=bf16, collection=collection,
                             progress=progress, **kw)


def merge_stage(encoder, exp_dir, *, collection: str, force: bool = False, remove_chunks: bool = False) -> dict:
    """Merge the chunks into the store and record it in the manifest.

    Skipped when the store already holds exactly the encoded chunks (same content digest). In an
    existing experiment ``encoder`` must be its document tower, and only the sections the merge
    produces change (``collection``, ``embeddings``; the indexes are dropped when the content
    changed): the query model, the document tower, the profile and anything else stay.
    """
    exp_dir = Path(exp_dir)
    existing = mf.load(exp_dir) if (exp_dir / mf.MANIFEST).is_file() else None
    if existing is not None:
        mf.check_model(existing, encoder, role="document")
    content = enc.chunks_digest(exp_dir)
    if existing is not None and (exp_dir / enc.EMBEDDINGS).is_file() and not force \
            and (content is None or existing.get("embeddings", {}).get("content_sha256") == content):
        return existing
    meta = enc.merge_chunks(exp_dir, remove_chunks=remove_chunks)
    if meta["model_fingerprint"] != encoder.fingerprint():
        raise mf.ManifestMismatchError(f"the chunks in {exp_dir} were encoded by another model")
    fresh = mf.new_manifest(encoder, collection, meta["num_docs"], meta["dtype"])
    fresh["embeddings"].update(content_sha256=meta["content_sha256"], doc_ids_sha256=meta["doc_ids_sha256"],
                               precision=meta.get("precision", "fp32"))
    if existing is None:
        m = fresh
    else:
        m = dict(existing, collection=fresh["collection"], embeddings=fresh["embeddings"])
        if existing.get("embeddings", {}).get("content_sha256") != meta["content_sha256"]:
            m.update(indexes={}, widths=[])  # built from other vectors: index_stage rebuilds them
    mf.save(exp_dir, m)
    return m


def index_stage(exp_dir, widths: Iterable[int], index_types: Optional[Dict[int, str]] = None, *,
                force: bool = False, train_size: int = fi.DEFAULT_TRAIN_SIZE, use_gpu: Optional[bool] = None) -> dict:
    """Build ``index-d{w}.faiss`` for each width (skipping existing ones) and record them in the manifest."""
    exp_dir = Path(exp_dir)
    m = mf.load(exp_dir)
    store = EmbeddingStore.open(exp_dir / enc.EMBEDDINGS)
    widths = sorted({int(w) for w in widths}, reverse=True)
    types = index_types or {w: fi.DEFAULT_FACTORY for w in widths}
    indexes = dict(m.get("indexes", {}))
    normalize = mf.normalizes(m)
    basis, basis_sha = query_basis(exp_dir, m)
    for w in widths:
        factory = types.get(w, fi.DEFAULT_FACTORY)
        path = exp_dir / fi.index_file(w)
        old = indexes.get(str(w))
        # an index built under another width rule (cosine vs dot product, another output basis) is rebuilt
        if path.is_file() and old and old.get("factory") == factory and old.get("normalize", True) == normalize \
                and old.get("basis") == basis_sha and not force:
            continue
        if path.is_file():
            path.unlink()  # a stale file never passes for the new index if the build is interrupted
        t0 = time.perf_counter()
        index = fi.build_index(store, w, factory, train_size=train_size, use_gpu=use_gpu, normalize=normalize,
                               basis=basis)
        size = fi.save_index(index, path)
        indexes[str(w)] = {
            "file": path.name, "factory": factory, "ntotal": int(index.ntotal), "bytes": size,
            "build_seconds": round(time.perf_counter() - t0, 3), "search_params": fi.default_search_params(factory),
            "normalize": normalize, "basis": basis_sha,
        }
        log.info("built %s (%s, %d vectors, %.1f MB)", path.name, factory, index.ntotal, size / 1e6)
    all_widths = sorted({int(k) for k in indexes}, reverse=True)
    return mf.update(exp_dir, indexes=indexes, widths=all_widths)


def build_experiment(encoder, corpus, exp_dir, *, collection: str, widths: Optional[List[int]] = None,
                     index_types: Optional[Dict[int, str]] = None, dtype: str = "float32", batch_size: int = 64,
                     bf16: bool = False, chunk_size: int = enc.DEFAULT_CHUNK_SIZE, progress: bool = True) -> dict:
    """Unsharded encode -> merge -> one index per width (default: the widths of the default points)."""
    if widths is None:
        widths = encoder.space.widths(encoder.default_points())
    encode_stage(encoder, corpus, exp_dir, collection=collection, chunk_size=chunk_size, batch_size=batch_size,
                 dtype=dtype, bf16=bf16, progress=progress)
    merge_stage(encoder, exp_dir, collection=collection)
    return index_stage(exp_dir, widths, index_types)
