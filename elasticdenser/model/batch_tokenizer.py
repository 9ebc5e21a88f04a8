"""Tokenising for the encode paths: every text once, batches cut by token count.

Batches are padded to their longest text, so the texts are ordered by their number of *tokens*
(longest first) before they are cut: ordered by characters, as before, a batch of passages padded
~17 % more tokens than it held (``BENCHMARKS.md``). The fast paths call the fast tokenizer's Rust
backend directly, without the ``transformers`` call's per-call Python layers (a visible share of a
batch-1 query; ``benchmarks/bench_query_path.py``), and tokenise every text once.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["batch_tokenizer", "tokenize_batch", "length_batches"]

_ENCODING_FIELDS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
_FIELDS = tuple(k for k, _ in _ENCODING_FIELDS)


def batch_tokenizer(encoder, max_length: int, padded: bool = True):
    """The encoder's fast tokenizer's Rust backend (``tokenizers.Tokenizer``), copied once per
    ``max_length`` and set to truncate there and, if ``padded``, to pad to the longest text with the
    tokenizer's pad token and type. None for a tokenizer without one, or one that pads left."""
    tok = encoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or tok.pad_token_id is None or getattr(tok, "padding_side", "right") != "right":
        return None
    cache = encoder.serving_cache("tokenizer")
    key = (id(tok), int(max_length), bool(padded))
    hit = cache.get(key)
    if hit is None:
        import tokenizers

        copy = tokenizers.Tokenizer.from_str(backend.to_str())
        copy.enable_truncation(int(max_length))
        if padded:
            copy.enable_padding(**_pad_settings(tok))
        else:
            copy.no_padding()
        hit = cache[key] = copy
    return hit


def _pad_settings(tok) -> dict:
    return {"pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token),
            "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0)}


def _arrays(encodings: list, tensors: str) -> dict:
    out = {k: np.array([getattr(e, a) for e in encodings], dtype=np.int64) for k, a in _ENCODING_FIELDS}
    return out if tensors == "np" else {k: torch.from_numpy(v) for k, v in out.items()}


def _transformers_batch(encoder, texts: Sequence[str], max_length: int, tensors: str) -> dict:
    return encoder.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors=tensors)


def tokenize_batch(encoder, texts: Sequence[str], max_length: int, tensors: str = "np") -> dict:
    """``input_ids`` / ``attention_mask`` / ``token_type_ids`` of ``texts`` in their order, padded to
    the longest: int64 arrays (``tensors="np"``) or tensors (``"pt"``)."""
    tok = batch_tokenizer(encoder, max_length)
    if tok is None:
        return _transformers_batch(encoder, texts, max_length, tensors)
    return _arrays(tok.encode_batch(list(texts)), tensors)


def length_batches(encoder, texts: Sequence[str], max_length: int, batch_size: int,
                   tensors: str = "np") -> Iterator[Tuple[List[int], dict]]:
    """``(positions, inputs)`` for every batch of at most ``batch_size`` texts, longest first in
    tokens; ``inputs`` as :func:`tokenize_batch` gives them for ``[texts[i] for i in positions]``."""
    texts = list(texts)
    bs = max(1, int(batch_size))
    if len(texts) <= bs:  # one batch (a query batch): padded by the tokenizer, rows reordered
        if len(texts) == 1:
            yield [0], tokenize_batch(encoder, texts, max_length, tensors)
            return
        b = tokenize_batch(encoder, texts, max_length, "np")
        order = np.argsort(-b["attention_mask"].sum(1), kind="stable")
        b = {k: v[order] for k, v in b.items() if k in _FIELDS}
        yield order.tolist(), (b if tensors == "np" else {k: torch.from_numpy(v) for k, v in b.items()})
        return
    tok = batch_tokenizer(encoder, max_length, padded=False)
    if tok is None:  # the transformers call: lengths from one unpadded pass, each batch tokenised again
        lengths = [len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        for start in range(0, len(texts), bs):
            idx = order[start : start + bs]
            yield idx, _transformers_batch(encoder, [texts[i] for i in idx], max_length, tensors)
        return
    encodings = tok.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
    pad = _pad_settings(encoder.tokenizer)
    for start in range(0, len(texts), bs):
        batch = [encodings[i] for i in order[start : start + bs]]
        for e in batch:  # padded by tokenizers, to the batch's longest (the first: longest first)
            e.pad(len(batch[0].ids), **pad)
        yield order[start : start + bs], _arrays(batch, tensors)
