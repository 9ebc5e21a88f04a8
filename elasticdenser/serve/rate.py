"""The arrival-rate estimate the router steers by (see :mod:`elasticdenser.serve.router`)."""
from __future__ import annotations

import math
from typing import Optional

__all__ = ["RateEstimator"]


class RateEstimator:
    """Exponentially decayed arrival counter: ``qps = s / tau``; see module docstring."""

    def __init__(self, tau_s: float = 1.0):
        self.tau = float(tau_s)
        self._s = 0.0
        self._t: Optional[float] = None

    def observe(self, now: float, n: int = 1) -> None:
        if self._t is not None and now > self._t:
            self._s *= math.exp(-(now - self._t) / self.tau)
        if self._t is None or now > self._t:
            self._t = now
        self._s += n

    def rate(self, now: float) -> float:
        if self._t is None:
            return 0.0
        dt = max(0.0, now - self._t)
        return self._s * math.exp(-dt / self.tau) / self.tau
