"""Tokenising a batch for the fast paths without the ``transformers`` call's per-call Python layers
(a visible share of a batch-1 query; ``benchmarks/bench_query_path.py``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["batch_tokenizer", "tokenize_batch"]


def tokenize_batch(encoder, texts: Sequence[str], max_length: int, tensors: str = "np") -> dict:
    """``input_ids`` / ``attention_mask`` / ``token_type_ids`` of ``texts``, padded to the longest:
    int64 numpy arrays from :func:`batch_tokenizer`, or the ``transformers`` call (``tensors``)
    for a tokenizer without a Rust backend."""
    tok = batch_tokenizer(encoder, max_length)
    if tok is None:
        return encoder.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                 return_tensors=tensors)
    encs = tok.encode_batch(list(texts))
    return {k: np.array([getattr(e, a) for e in encs], dtype=np.int64) for k, a in _ENCODING_FIELDS}


_ENCODING_FIELDS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))


def batch_tokenizer(encoder, max_length: int):
    """The encoder's fast tokenizer's Rust backend (``tokenizers.Tokenizer``), copied once per
    ``max_length`` and set to truncate there and pad to the longest text: the same ids, mask and
    token types as the ``transformers`` call, without its per-call Python layers (a visible share
    of a batch-1 query; ``benchmarks/bench_query_path.py``). None for a tokenizer without one."""
    tok = encoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or tok.pad_token_id is None or getattr(tok, "padding_side", "right") != "right":
        return None
    cache = encoder.serving_cache("tokenizer")
    key = (id(tok), int(max_length))
    hit = cache.get(key)
    if hit is None:
        import tokenizers

        copy = tokenizers.Tokenizer.from_str(backend.to_str())
        copy.enable_truncation(int(max_length))
        copy.enable_padding(pad_id=int(tok.pad_token_id), pad_token=str(tok.pad_token),
                            pad_type_id=int(getattr(tok, "pad_token_type_id", 0) or 0))
        hit = cache[key] = copy
    return hit
