"""The document tower's fixed embeddings: encoded once by the full model (rank 0), cached on
disk under a key of the model fingerprint, collection and document count.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from elasticdenser.atomic import atomic_path
from elasticdenser.errors import StateError
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.distributed import Dist

log = logging.getLogger(__name__)

__all__ = ["load_encoder", "ensure_documents", "encode_documents", "doc_cache_key", "fixed_documents"]


def load_encoder(path: Optional[str], device: torch.device):
    """The checkpoint at ``path`` (default model if None) as an :class:`ElasticEncoder` on ``device``."""
    from elasticdenser.model.encoder import ElasticEncoder

    enc = ElasticEncoder.from_pretrained(path, full_tower=False)  # training trains the shared weights at every point
    return enc.to(device)


def ensure_documents(encoder, texts: Sequence[str], config: TrainConfig, cache_dir: Path, key: str, dist: Dist) -> Path:
    """The cache file of full-model, full-width document embeddings; encoded once (rank 0) if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"docs-{key}.npy"
    if dist.rank0_decides(not path.is_file()):
        if dist.main:
            log.info("encoding %d documents with the full model -> %s", len(texts), path)
            emb = encoder.encode(
                list(texts), None, batch_size=config.doc_batch_size, max_length=config.doc_max_length,
                progress=config.progress,
            )
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, emb)
        dist.barrier()
    rows = np.load(path, mmap_mode="r").shape[0]
    if rows != len(texts):
        raise StateError(f"document cache {path} has {rows} rows for {len(texts)} documents; delete it")
    return path


def encode_documents(encoder, texts: Sequence[str], config: TrainConfig, cache_dir: Path, key: str, dist: Dist) -> torch.Tensor:
    """:func:`ensure_documents`, loaded into memory as a tensor."""
    return torch.from_numpy(np.load(ensure_documents(encoder, texts, config, cache_dir, key, dist)))


def doc_cache_key(encoder, config: TrainConfig, n_docs: int, tag: str = "") -> str:
    h = hashlib.sha256()
    h.update(encoder.fingerprint().encode())
    h.update(f"{config.collection}|{n_docs}|{config.doc_max_length}|{tag}".encode())
    return h.hexdigest()[:20]


def fixed_documents(doc_encoder, data, config: TrainConfig, cache_dir: Path, dist: Dist):
    """The document side of training: ``(documents, embeddings file)``.

    Read from ``config.experiment``'s store when given (its document tower must be ``doc_encoder``
    and its rows the training corpus, in order), else encoded once into the cache. The documents
    are a :class:`FixedDocuments` (exact: all rows in memory) or, with ``candidate_search: faiss``,
    a :class:`StoreDocuments` that leaves the rows memory-mapped on disk.
    """
    from elasticdenser.training.candidates import StoreDocuments
    from elasticdenser.training.losses import FixedDocuments

    bounded = config.candidate_search == "faiss"
    normalize = doc_encoder.normalize
    if config.experiment:
        from elasticdenser.index import encode as enc
        from elasticdenser.index import manifest as mf

        exp = Path(config.experiment)
        mf.check_model(mf.load(exp), doc_encoder, role="document")
        ids = enc.read_doc_ids(exp)
        if ids != data.doc_ids:
            raise StateError(f"experiment {exp} holds {len(ids)} documents that are not the training corpus "
                             f"{data.collection_name!r} ({len(data.doc_ids)} documents, in order"
                             f"{', cut by max_documents' if config.max_documents else ''}); index that corpus "
                             "or drop `experiment`")
        path = exp / enc.EMBEDDINGS
        log.info("reusing the document embeddings of %s (%d rows)", exp, len(ids))
        if bounded:
            return StoreDocuments.from_experiment(exp, normalize, seed=config.seed, sampled_negatives=config.sampled_negatives,
                                                  device=dist.device), path
        array = np.load(path, mmap_mode="r")
    else:
        path = ensure_documents(doc_encoder, data.doc_texts, config, cache_dir,
                                doc_cache_key(doc_encoder, config, len(data.doc_texts)), dist)
        array = np.load(path, mmap_mode="r")
        if bounded:
            return StoreDocuments(array, normalize, seed=config.seed, sampled_negatives=config.sampled_negatives,
                                  device=dist.device), path
    return FixedDocuments(torch.from_numpy(np.array(array, dtype=np.float32)).to(dist.device), normalize=normalize), path
