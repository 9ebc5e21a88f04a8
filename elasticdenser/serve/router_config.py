"""The router's settings (:class:`RouterConfig`), apart from its decision logic in ``serve/router.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from elasticdenser.errors import InvalidInputError

__all__ = ["RouterConfig"]


@dataclass
class RouterConfig:
    slo_ms: float = 50.0  #: latency target (p95 of request latency)
    max_batch: int = 64  #: largest batch the worker encodes at once
    max_wait_ms: float = 2.0  #: how long a non-full batch may wait for company
    margin: float = 0.6  #: use at most this fraction of a point's SLO capacity
    step_up_margin: float = 0.5  #: stricter fraction a better point must meet before stepping up
    step_up_after_s: float = 5.0  #: ... continuously for this long (hysteresis)
    rate_tau_s: float = 1.0  #: EWMA time constant of the arrival-rate estimate (step-down decisions)
    slow_rate_tau_s: float = 5.0  #: a slower, less noisy estimate for step-up decisions
    rate_noise_z: float = 2.0  #: standard deviations of the fast estimate's noise a queueing capacity tolerates
    max_queue: Optional[int] = None  #: bounded queue; None = what the cheapest point drains in the SLO
    calibrate: bool = True  #: scale the profile by observed/profiled batch time (EWMA), see observe_service
    calibration_alpha: float = 0.05  #: EWMA weight of one batch in that scale
    calibration_bounds: Tuple[float, float] = (0.5, 4.0)  #: the scale stays within these
    latency_stat: str = "p90"  #: profile statistic used for latency predictions
    throughput_stat: str = "median"  #: profile statistic used for capacity / steady batch size
    #: answer queued requests that can no longer meet the SLO like a refusal (503 + Retry-After) instead
    #: of serving them late (``serve`` turns it on) ...
    shed_late: bool = False
    shed_at: float = 0.8  #: ... once the predicted finish passes this fraction of the SLO (service-time tails)

    def __post_init__(self) -> None:
        if self.slo_ms <= 0:
            raise InvalidInputError(f"slo_ms must be > 0, got {self.slo_ms}")
        if self.max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 < self.step_up_margin <= self.margin <= 1.5:
            raise InvalidInputError("need 0 < step_up_margin <= margin <= 1.5")
        if self.step_up_after_s < 0 or self.rate_tau_s <= 0 or self.slow_rate_tau_s <= 0 or self.rate_noise_z < 0:
            raise InvalidInputError("step_up_after_s, rate_noise_z must be >= 0 and rate_tau_s, slow_rate_tau_s > 0")
        if not 0 < self.calibration_alpha <= 1:
            raise InvalidInputError("calibration_alpha must be in (0, 1]")
        if (self.max_queue is not None and self.max_queue < 1) or not 0 < self.shed_at <= 1:
            raise InvalidInputError(f"need max_queue >= 1 and 0 < shed_at <= 1, got {self.max_queue}, {self.shed_at}")
