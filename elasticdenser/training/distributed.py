"""The collectives elastic training needs, over ``torch.distributed`` as ``torchrun`` sets it up
(gloo on CPU, NCCL on GPUs): one process is the same code with ``world == 1``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, List, Optional, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = ["Dist", "setup_distributed", "broadcast_parameters", "allreduce_gradients", "allreduce_scalar"]




@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def rank0_decides(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank.

        A check of shared state (does the cache file exist yet?) must be taken once: a rank that
        looks after rank 0 has written the file would skip the collective rank 0 waits in.
        """
        return bool(self.from_rank0([int(flag)])[0])

    def from_rank0(self, values: Sequence[int]) -> List[int]:
        """Rank 0's integers on every rank, for choices each rank would otherwise make on its own."""
        if self.world <= 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]


def setup_distributed(timeout: Optional[timedelta] = None) -> Dist:
    """Initialise torch.distributed from torchrun's env (gloo on CPU, NCCL on GPUs); ``timeout``:
    how long a collective waits for the slowest rank (torch's default when None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo",
                                             **({"timeout": timeout} if timeout is not None else {}))
        owns = True
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


def broadcast_parameters(model: torch.nn.Module, dist: Dist) -> None:
    if dist.world > 1:
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(t.data, src=0)


def allreduce_gradients(params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
    """Average gradients over ranks (what DDP does), bucketed into one flat tensor."""
    if dist.world <= 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat /= dist.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def allreduce_scalar(values: Dict[str, float], dist: Dist) -> Dict[str, float]:
    if dist.world <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / dist.world for k, v in zip(keys, t.tolist())}
