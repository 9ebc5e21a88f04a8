"""Building blocks shared by the elastic (sliced) forward and the materialised modules, so that
both paths compute exactly the same function: the attention bias of a padding mask and pooling.
The width rule (truncate + re-normalise) is :func:`elasticdenser.operating_point.truncate`.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["attention_bias", "is_exporting", "pool"]

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
