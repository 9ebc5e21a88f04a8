"""Building blocks shared by the elastic (sliced) forward and the materialised modules, so that
both paths compute exactly the same function: the attention bias of a padding mask and pooling;
and how a batch of mixed lengths is run without every short row paying for the longest one.
The width rule (truncate + re-normalise) is :func:`elasticdenser.operating_point.truncate`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["attention_bias", "is_exporting", "pool", "pooled_by_length"]

def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """(B, S) 0/1 mask -> (B, 1, 1, S) additive bias, or None when nothing is padded."""
    if attention_mask is None:
        return None
    if not torch.jit.is_tracing() and not is_exporting() and bool(attention_mask.min() > 0):
        return None
    bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias


def is_exporting() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:  # pragma: no cover - older torch
        return False


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def pooled_by_length(pooled: Callable[..., torch.Tensor], batch: dict, min_saving: float = 0.25) -> torch.Tensor:
    """``pooled(input_ids, attention_mask, token_type_ids)`` of ``batch``, run as two forwards when
    the batch mixes short and long rows: sorted by length and cut where the two parts, each trimmed
    to its own longest row, pad least.

    Why: padding changes nothing a row computes (masked attention, masked pooling), but a padded
    forward costs every row the longest row's length; training batches that mix a few long
    pseudo-queries into short ones paid that on every step. The result is the one-forward result up
    to float rounding, in the batch's order, with the same gradients. One forward when the cut would
    save less than ``min_saving`` of the padded tokens (a forward has a fixed cost too).
    """
    mask = batch["attention_mask"]
    types = batch.get("token_type_ids")
    n, padded = int(mask.shape[0]), int(mask.shape[1])
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    ls = lengths[order].tolist()
    best, cut = n * padded, 0
    for i in range(1, n):
        cost = i * ls[i - 1] + (n - i) * ls[-1]
        if cost < best:
            best, cut = cost, i
    if not cut or best > (1.0 - min_saving) * n * padded:
        return pooled(batch["input_ids"], mask, types)
    parts = []
    for rows in (order[:cut], order[cut:]):
        used = torch.nonzero(mask[rows].any(0))
        keep = int(used.max()) + 1 if used.numel() else 1  # only columns that no row of the part attends to go
        parts.append(pooled(batch["input_ids"][rows, :keep], mask[rows, :keep],
                            None if types is None else types[rows, :keep]))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    return torch.cat(parts)[inverse]
