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

__all__ = ["load_encoder", "encode_documents", "doc_cache_key"]


def load_encoder(path: Optional[str], device: torch.device):
    """The checkpoint at ``path`` (default model if None) as an :class:`ElasticEncoder` on ``device``."""
    from elasticdenser.model.encoder import ElasticEncoder

    enc = ElasticEncoder.from_pretrained(path)
    return enc.to(device)


def encode_documents(encoder, texts: Sequence[str], config: TrainConfig, cache_dir: Path, key: str, dist: Dist) -> torch.Tensor:
    """Full-model, full-width document embeddings; computed once (rank 0) and cached as .npy."""
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
    emb = np.load(path)
    if emb.shape[0] != len(texts):
        raise StateError(f"document cache {path} has {emb.shape[0]} rows for {len(texts)} documents; delete it")
    return torch.from_numpy(emb)


def doc_cache_key(encoder, config: TrainConfig, n_docs: int, tag: str = "") -> str:
    h = hashlib.sha256()
    h.update(encoder.fingerprint().encode())
    h.update(f"{config.collection}|{n_docs}|{config.doc_max_length}|{tag}".encode())
    return h.hexdigest()[:20]
