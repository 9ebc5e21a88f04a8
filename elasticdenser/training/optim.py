"""The optimiser every trainer builds (query towers, the joint phase, rankers): one owner for its choice."""
from __future__ import annotations

from typing import Iterable, Union

import torch

__all__ = ["adamw"]


def adamw(params: Union[Iterable[torch.Tensor], Iterable[dict]], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW on torch's fused kernel where the parameters' device has one (CPU included), else its default.

    Why fused: a training step updates every parameter of the query model, half of them the word
    embedding table, and the per-tensor Python loop of the default CPU implementation costs a
    visible share of a step (``BENCHMARKS.md``, issue 14); the fused kernel does the same update in
    one pass. The arithmetic is AdamW's either way; results differ only in float rounding order.
    A checkpoint written by either resumes in either.
    """
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
