"""Which operating points a training step trains, and the learning-rate schedule.

Both are pure functions of their arguments (seed, step), so a resumed run and every
data-parallel rank draw exactly the same points and rates.
"""
from __future__ import annotations

import logging
import math
import random
from typing import List, Optional, Sequence

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import ElasticSpace, OperatingPoint

log = logging.getLogger(__name__)

__all__ = ["PointSampler", "lr_lambda"]




class PointSampler:
    """Which operating points one step trains.

    ``"sandwich"``: the largest and smallest of ``points`` plus ``num_random`` random points between
    them (each axis drawn independently: layers, heads, FFN in steps of ``ffn_step``, width among
    ``widths``). ``"fixed"``: every listed point, every step. Sampling is a pure function of
    ``(seed, step)``, so a resumed run (and every data-parallel rank) draws the same points.
    """

    def __init__(
        self,
        space: ElasticSpace,
        points: Sequence[OperatingPoint],
        mode: str = "sandwich",
        num_random: int = 2,
        widths: Optional[Sequence[int]] = None,
        ffn_step: Optional[int] = None,
        seed: int = 0,
    ):
        if mode not in ("sandwich", "fixed"):
            raise InvalidInputError(f"point sampling must be 'sandwich' or 'fixed', got {mode!r}")
        if not points:
            raise InvalidInputError("point sampler: no operating points given")
        self.space = space
        self.points = sorted({space.validate(p) for p in points}, reverse=True)
        self.mode = mode
        self.num_random = int(num_random)
        self.seed = int(seed)
        self.largest = max(self.points, key=lambda p: (space.flops(p, 32), p.width))
        self.smallest = min(self.points, key=lambda p: (space.flops(p, 32), p.width))
        lo, hi = self.smallest, self.largest
        in_range = {int(w) for w in (widths or space.widths(self.points)) if lo.width <= w <= hi.width}
        self.widths = sorted(in_range or {lo.width, hi.width})
        self.ffn_step = int(ffn_step or max(1, space.intermediate_size // space.num_heads))

    def sample(self, step: int) -> List[OperatingPoint]:
        if self.mode == "fixed":
            return list(self.points)
        rng = random.Random(self.seed * 1_000_003 + int(step))
        lo, hi = self.smallest, self.largest
        out = [hi] if hi == lo else [hi, lo]
        for _ in range(self.num_random):
            ffn_lo = -(-lo.ffn // self.ffn_step)
            ffn_hi = hi.ffn // self.ffn_step
            ffn = rng.randint(ffn_lo, ffn_hi) * self.ffn_step if ffn_hi >= ffn_lo else rng.randint(lo.ffn, hi.ffn)
            point = OperatingPoint(
                rng.randint(lo.layers, hi.layers),
                rng.randint(lo.heads, hi.heads),
                min(max(ffn, lo.ffn), hi.ffn),
                rng.choice(self.widths),
            )
            out.append(self.space.validate(point))
        return out

    def weight(self, point: OperatingPoint, largest: float, smallest: float) -> float:
        """The loss weight of ``point``: the sandwich's bounds may get more of a step than the rest."""
        if point == self.largest:
            return float(largest)
        return float(smallest) if point == self.smallest else 1.0


def lr_lambda(step: int, warmup: int, total: int, schedule: str = "linear") -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear/cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)
