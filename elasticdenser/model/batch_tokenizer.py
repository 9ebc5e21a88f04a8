"""Tokenising for the encode paths: batches cut by token count, every text tokenised once.

Batches are padded to their longest text, so texts are ordered by their number of *tokens* (longest
first) before they are cut: ordered by characters, as before, neighbours could differ widely in
tokens and every batch carried the difference as padding (``BENCHMARKS.md``, session 29). The fast
paths call the fast tokenizer's Rust backend directly, without the ``transformers`` call's per-call
Python layers (a visible share of a batch-1 query; ``benchmarks/bench_query_path.py``).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["batch_tokenizer", "tokenize_batch", "length_batches", "WINDOW_BATCHES"]

_ENCODING_FIELDS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
_FIELDS = tuple(k for k, _ in _ENCODING_FIELDS)
#: texts are tokenised and ordered this many batches at a time: memory stays bounded by one window
#: (a ``tokenizers`` encoding also keeps whatever truncation cut off), and ordering 8 batches
#: together already leaves little padding
WINDOW_BATCHES = 8


def batch_tokenizer(encoder, max_length: int, padded: bool = True):
    """The encoder's fast tokenizer's Rust backend (``tokenizers.Tokenizer``), copied once per
    ``max_length`` and set to truncate there (on the right) and, if ``padded``, to pad to the longest
    text with the tokenizer's pad token and type. None for a tokenizer without one, or one that pads
    or truncates on the left (the ``transformers`` call then runs)."""
    tok = encoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if (backend is None or tok.pad_token_id is None or getattr(tok, "padding_side", "right") != "right"
            or getattr(tok, "truncation_side", "right") != "right"):
        return None
    cache = encoder.serving_cache("tokenizer")
    key = (id(tok), int(max_length), bool(padded))
    hit = cache.get(key)
    if hit is None:
        import tokenizers

        copy = tokenizers.Tokenizer.from_str(backend.to_str())
        copy.enable_truncation(int(max_length))
        if padded:
            copy.enable_padding(pad_id=int(tok.pad_token_id), pad_token=str(tok.pad_token), pad_type_id=_pad_type(tok))
        else:
            copy.no_padding()
        hit = cache[key] = copy
    return hit


def _pad_type(tok) -> int:
    return int(getattr(tok, "pad_token_type_id", 0) or 0)


def _as(batch: dict, tensors: str) -> dict:
    return batch if tensors == "np" else {k: torch.from_numpy(v) for k, v in batch.items()}


def _transformers_batch(encoder, texts: Sequence[str], max_length: int) -> dict:
    b = encoder.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: np.asarray(b[k], dtype=np.int64) for k in _FIELDS if k in b}


def tokenize_batch(encoder, texts: Sequence[str], max_length: int, tensors: str = "np") -> dict:
    """``input_ids`` / ``attention_mask`` / ``token_type_ids`` of ``texts`` in their order, padded to
    the longest: int64 arrays (``tensors="np"``) or tensors (``"pt"``)."""
    tok = batch_tokenizer(encoder, max_length)
    if tok is None:
        return _as(_transformers_batch(encoder, texts, max_length), tensors)
    encodings = tok.encode_batch(list(texts))
    return _as({k: np.array([getattr(e, a) for e in encodings], dtype=np.int64) for k, a in _ENCODING_FIELDS}, tensors)


def _longest_first(lengths: Sequence[int]) -> List[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _padded(rows: List[Tuple[list, list]], pad_id: int, pad_type: int) -> dict:
    """One batch from ``(ids, type ids)`` rows, longest first, padded on the right to the first."""
    shape = (len(rows), len(rows[0][0]))
    out = {"input_ids": np.full(shape, pad_id, dtype=np.int64), "attention_mask": np.zeros(shape, dtype=np.int64),
           "token_type_ids": np.full(shape, pad_type, dtype=np.int64)}
    for r, (ids, types) in enumerate(rows):
        out["input_ids"][r, : len(ids)] = ids
        out["attention_mask"][r, : len(ids)] = 1
        out["token_type_ids"][r, : len(ids)] = types
    return out


def _window_batches(encoder, texts: List[str], max_length: int, bs: int) -> Iterator[Tuple[List[int], dict]]:
    if len(texts) <= bs:  # one batch (a query batch): padded by the tokenizer, its rows reordered
        b = tokenize_batch(encoder, texts, max_length)
        if len(texts) == 1:
            yield [0], b
            return
        order = _longest_first(b["attention_mask"].sum(1).tolist())
        yield order, {k: v[order] for k, v in b.items()}
        return
    tok = batch_tokenizer(encoder, max_length, padded=False)
    pad_id, pad_type = int(encoder.tokenizer.pad_token_id or 0), _pad_type(encoder.tokenizer)
    for lo in range(0, len(texts), bs * WINDOW_BATCHES):
        window = texts[lo : lo + bs * WINDOW_BATCHES]
        if tok is None:  # the transformers call: lengths from one unpadded pass, each batch tokenised again
            lengths = [len(ids) for ids in encoder.tokenizer(window, truncation=True, max_length=max_length)["input_ids"]]
        else:  # (ids, types) kept, the encodings (and what truncation cut off) dropped
            rows = [(e.ids, e.type_ids) for e in tok.encode_batch(window)]
            lengths = [len(ids) for ids, _ in rows]
        order = _longest_first(lengths)
        for start in range(0, len(window), bs):
            idx = order[start : start + bs]
            batch = (_transformers_batch(encoder, [window[i] for i in idx], max_length) if tok is None
                     else _padded([rows[i] for i in idx], pad_id, pad_type))
            yield [lo + i for i in idx], batch


def length_batches(encoder, texts: Sequence[str], max_length: int, batch_size: int, tensors: str = "np",
                   progress: Optional[str] = None) -> Iterator[Tuple[List[int], dict]]:
    """``(positions, inputs)`` for every batch of at most ``batch_size`` texts, longest first in tokens
    within each window of :data:`WINDOW_BATCHES` batches; ``inputs`` as :func:`tokenize_batch` gives
    them for ``[texts[i] for i in positions]``. ``progress``: a progress bar with that title."""
    texts = list(texts)
    if not texts:
        return
    bs = max(1, int(batch_size))
    batches = _window_batches(encoder, texts, max_length, bs)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch", total=-(-len(texts) // bs))
    for idx, batch in batches:
        yield idx, _as(batch, tensors)
