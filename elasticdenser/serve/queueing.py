"""Tail latency of a single server under Poisson arrivals (M/D/1), for the router's queueing capacity.

Why: the router's utilisation margin stands in for the queueing tail; where one request's service is
short against the SLO and batching gains nothing (a reranking stage at a one-second SLO), the tail
itself is the better limit. The waiting time of M/D/1 has the exponential tail
``P(wait > t) ~ C exp(-theta t)``, ``theta > 0`` solving ``rate (exp(theta S) - 1) = theta`` (the
Cramér-Lundberg decay rate of M/G/1 with deterministic service ``S``) and, with ``x = theta S``,
``C = (1 - rho) / (rho exp(x) - 1)``; at rho = 0.5 it gives the exact M/D/1 99th percentile wait.
"""
from __future__ import annotations

import math

__all__ = ["TAIL_QUANTILE", "md1_latency_ms", "md1_capacity_qps"]

TAIL_QUANTILE = 0.99  #: the latency quantile the router's queueing capacity keeps within the SLO


def md1_latency_ms(service_ms: float, qps: float, quantile: float = TAIL_QUANTILE) -> float:
    """The ``quantile`` of service + wait (ms) at ``qps`` Poisson arrivals, one at a time (inf at rho >= 1)."""
    s = service_ms / 1000.0
    rho = qps * s
    if rho >= 1.0:
        return math.inf
    if rho <= 1.0 - quantile:  # P(wait > 0) = rho is already within the quantile
        return service_ms

    # theta S = x > 0 with rho (exp(x) - 1) = x: Newton from above the root (the left side is convex)
    x = 2.0 * math.log(1.0 / rho) + 2.0
    while rho * math.expm1(x) <= x:
        x *= 2.0
    for _ in range(100):
        step = (rho * math.expm1(x) - x) / (rho * math.exp(x) - 1.0)
        x -= step
        if step < 1e-12 * x:
            break
    c = (1.0 - rho) / (rho * math.exp(x) - 1.0)
    return service_ms * (1.0 + max(0.0, math.log(c / (1.0 - quantile))) / x)


def md1_capacity_qps(service_ms: float, budget_ms: float, quantile: float = TAIL_QUANTILE) -> float:
    """The largest rate whose :func:`md1_latency_ms` fits in ``budget_ms`` (0 if one lone request does not)."""
    if service_ms <= 0:
        return math.inf
    if service_ms > budget_ms:
        return 0.0
    lo, hi = 0.0, 1000.0 / service_ms
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if md1_latency_ms(service_ms, mid, quantile) <= budget_ms else (lo, mid)
    return lo
