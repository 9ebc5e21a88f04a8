"""The optimiser every trainer builds (query towers, the joint phase, rankers): one owner for its choice."""
from __future__ import annotations

from typing import Iterable, List, Union

import torch

__all__ = ["adamw", "load_optimizer_state"]


def _fused_kernel(tensors: List[torch.Tensor]) -> bool:
    """Whether torch has a fused AdamW for every tensor here: CUDA, and CPU since torch 2.4."""
    return bool(tensors) and all(t.is_floating_point() and (t.device.type == "cuda" or (
        t.device.type == "cpu" and torch.__version__ >= (2, 4))) for t in tensors)


def adamw(params: Union[Iterable[torch.Tensor], Iterable[dict]], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW on torch's fused kernel where the parameters' device has one (CPU since torch 2.4), else its default.

    Why fused: a training step updates every parameter of the query model, half of them the word
    embedding table, and the per-tensor loop of the default CPU implementation costs a visible share
    of a step (``BENCHMARKS.md``, issue 14, session 26); the fused kernel does the same update in one
    pass. The arithmetic is AdamW's either way; results differ only in float rounding order.
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if _fused_kernel(tensors) else None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the kernel this process chose: a checkpoint stores
    its writer's choice (``fused``/``foreach``), and one written before the fused kernel must not
    switch a resumed run back to the slower loop."""
    chosen = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, chosen):
        group["fused"], group["foreach"] = fused, foreach
        for p in group["params"] if fused else ():
            st = optimizer.state.get(p, {})
            if torch.is_tensor(st.get("step")):  # the fused kernel keeps the step count beside the parameter
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
