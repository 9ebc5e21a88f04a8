"""The router: pure decision logic, shared by the real service and the load simulator.

Nothing here sleeps, spawns threads or reads the wall clock on its own: every method takes
``now`` (seconds) or calls the injected ``clock``. The discrete-event simulator drives the very
same object with simulated time, so simulating the router tests the production router.

Model (all service times come from the measured :class:`~elasticdenser.serve.profile.Profile`):

* ``S_p(b)``: service time of one batch of ``b`` queries at point ``p`` (median for throughput,
  p90 for latency), linearly interpolated from the measured table.
* Arrival rate: an exponentially decayed counter (time constant ``rate_tau_s``; ``slow_rate_tau_s``
  for stepping up): each arrival adds 1 to ``s``, which decays as ``exp(-dt / tau)``; ``qps = s / tau``
  (mean ``r``, relative noise ``1 / sqrt(2 r tau)`` for Poisson). Rejected requests count too.
* Steady state at rate ``r``: with dynamic batching the worker serves back to back, and the next
  batch is whatever arrived during the current one: ``b* = r * S_p(b*)`` (fixed point, capped at
  ``max_batch``; no fixed point below ``max_batch`` means overload). A request waits for the
  batch in service (<= ``S(b*)``) and then its own batch, so the predicted p95-ish latency is
  ``max_wait + 2 * S_p90(b*)``.
* SLO capacity of a point: the largest rate whose steady latency meets the SLO,
  ``cap_p = max_b { 1000 b / S_p(b) : max_wait + 2 S_p90(b) <= slo }``.
* Backlog: when the worker is free and ``q`` requests wait, the last of them is answered after
  ``drain_p(q)`` (full batches of ``max_batch``, then the remainder); a request *arriving* behind
  them also waits for the batch in service (:meth:`Router.predict_ms`).
* Queueing capacity ``qcap_p``: the largest Poisson rate whose 99th percentile latency of one-at-a-time
  service (M/D/1 at ``S_p90(1)``, :mod:`~elasticdenser.serve.queueing`) meets the SLO. It matters where
  batching gains little and a request is short against the SLO (a reranker at a one-second SLO);
  batches whose time grows linearly make the first of them wait longer than this model says.
* A point is *feasible* for the next batch when ``qps <= max(margin * cap_p, qcap_p + z sd)`` (the
  margin stands in for the tail that ``qcap_p`` holds; ``sd``, the fast estimate's noise at ``qcap_p``,
  keeps a low rate's Poisson noise from sending the point down; a load held above the point still
  crosses it within seconds) and ``drain_p(q)`` meets the SLO.

Calibration: every served batch reports its measured time (:meth:`Router.observe_service`); an
EWMA of measured / profiled time becomes a ``scale`` on the profiled service times of its stage kind
(query-only or reranked), so a machine that got busier (or quieter) since ``elasticdenser profile``
ran is modelled as it is now.

Decision for the next batch (:meth:`Router.choose`): the *routed* point is the highest-quality
Pareto point feasible at the load; if none is, the cheapest. Stepping *down* happens at once.
Stepping *up* to a better point needs ``slow_qps`` within the same limit taken at
``step_up_margin`` instead of ``margin`` continuously for ``step_up_after_s`` seconds, where
``slow_qps`` is a slower, less noisy estimate (``slow_rate_tau_s``) -- hysteresis; a steady load
near a boundary does not flap. A burst (a queue the routed point cannot drain within the SLO) sends
that one batch to the best cheaper point that can, without changing the routed point.

Admission: a bounded queue of ``max_queue`` requests (default: what the cheapest point drains in the
SLO); beyond it :meth:`Router.admit` says no; with ``shed_late``, :meth:`Router.late` also sheds late ones.
A profile's entries may be joint configurations (query point + ranker point at a rerank depth,
:class:`~elasticdenser.operating_point.ServingConfig`): they are routed like points.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import OperatingPoint, ServingConfig
from elasticdenser.serve.profile import PointProfile, Profile
from elasticdenser.serve.queueing import md1_capacity_qps
from elasticdenser.serve.rate import RateEstimator
from elasticdenser.serve.router_config import RouterConfig

__all__ = ["Overloaded", "RouterConfig", "Decision", "RateEstimator", "Router"]


class Overloaded(RuntimeError):
    """A request refused because the bounded queue is full (answer 503 / 'overloaded')."""

    def __init__(self, message: str = "overloaded: the request queue is full", retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Decision:
    point: str
    qps: float
    queue_len: int
    predicted_ms: float


class Router:
    """Chooses the operating point of each batch; see the module docstring for the model.

    ``points`` restricts routing to names the searcher actually serves. ``fixed`` makes a static
    policy (always that point) with the same queue and batching, for baselines.
    """

    def __init__(
        self,
        profile: Profile,
        config: Optional[RouterConfig] = None,
        clock: Callable[[], float] = time.monotonic,
        points: Optional[Sequence[Union[str, OperatingPoint]]] = None,
        fixed: Optional[Union[str, OperatingPoint]] = None,
    ):
        self.profile = profile
        self.config = config or RouterConfig()
        self.clock = clock
        allowed = None if points is None else {str(p) for p in points}
        ladder = [p for p in profile.ordered(pareto_only=True) if allowed is None or p.name in allowed]
        if not ladder:
            raise InvalidInputError(
                "no profiled Pareto operating point is served by this searcher; re-run `elasticdenser profile`"
            )
        if fixed is not None:
            fixed = str(fixed)
            if fixed not in profile:
                raise InvalidInputError(f"point {fixed} is not in the profile; known: {', '.join(profile.points)}")
            ladder = [profile[fixed]]
        self.fixed = fixed
        self._tables: Dict[Tuple[str, str], List[float]] = {}
        # observed / profiled service time (1 = the machine is as profiled), one per stage kind: the query
        # encoder's short calls and the ranker's long ones drift apart when the machine gets busier
        self._stage = {name: "rerank" if p.config.ranker is not None else "query" for name, p in profile.points.items()}
        self.scales = {"query": 1.0, "rerank": 1.0}
        self._scale_ewma = dict(self.scales)
        self.ladder: List[PointProfile] = ladder  # best quality first
        self.capacity: Dict[str, float] = {}
        self.queueing_capacity: Dict[str, float] = {}
        self.max_queue = 1
        self._index = {p.name: i for i, p in enumerate(ladder)}
        self._refresh()
        self.rate = RateEstimator(self.config.rate_tau_s)
        self.slow_rate = RateEstimator(self.config.slow_rate_tau_s)
        self._current = ladder[0].name
        self._ok_since: Dict[str, Optional[float]] = {p.name: None for p in ladder}
        self.switches: List[Tuple[float, str, str]] = []
        self.accepted = 0
        self.rejected = 0
        self.burst_batches = 0  # batches sent below the routed point because of a queue burst
        self.last: Optional[Decision] = None

    @classmethod
    def static(cls, profile: Profile, point: Union[str, OperatingPoint], config: Optional[RouterConfig] = None,
               clock: Callable[[], float] = time.monotonic) -> "Router":
        return cls(profile, config, clock, fixed=point)

    @property
    def scale(self) -> float:
        """The query stage's calibration scale (``scales`` has the ranker stage's too)."""
        return self.scales["query"]

    @property
    def current(self) -> OperatingPoint:
        """The routed point (what ``choose`` serves unless a burst sends a batch lower)."""
        return self.profile[self._current].point

    @property
    def current_config(self) -> ServingConfig:
        """The routed configuration (with a ranker profiled: query point, ranker point, depth)."""
        return self.profile[self._current].config

    @property
    def best(self) -> PointProfile:
        return self.ladder[0]

    @property
    def cheapest(self) -> PointProfile:
        return self.ladder[-1]

    # --- model ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Recompute capacities and the default queue bound for the current ``scales``."""
        self.capacity = {p.name: self._capacity(p) for p in self.ladder}
        budget = self.config.slo_ms - self.config.max_wait_ms
        self.queueing_capacity = {p.name: md1_capacity_qps(self._s(p, 1), budget) for p in self.ladder}
        self.max_queue = self.config.max_queue or self._default_max_queue(self.cheapest)

    def observe_service(self, point: Union[str, OperatingPoint], batch: int, ms: float) -> None:
        """Feed back a measured batch service time (ms); keeps the profile honest online.

        The ratio observed / profiled median (same point, same batch size) is averaged with an EWMA
        (``calibration_alpha`` per batch) into the ``scales`` entry of its stage kind (query-only or
        reranked), which multiplies every profiled service time of that kind -- e.g. when other work
        on the machine slows every point down alike. Capacities and the default queue bound follow
        (recomputed when a scale moves by more than 3%).
        """
        c = self.config
        if not c.calibrate or batch < 1 or ms <= 0 or point not in self.profile:
            return
        stage = self._stage[str(point)]
        base = self.profile[point].service_ms(batch, c.throughput_stat)
        lo, hi = c.calibration_bounds
        ewma = self._scale_ewma[stage]
        ratio = min(2 * ewma, max(0.5 * ewma, ms / base))  # an outlier moves the scale at most as a 2x reading
        ewma = self._scale_ewma[stage] = min(hi, max(lo, ewma + c.calibration_alpha * (ratio - ewma)))
        if abs(ewma - self.scales[stage]) > 0.03 * self.scales[stage]:
            self.scales[stage] = ewma
            self._refresh()

    def _s(self, p: PointProfile, b: float, stat: Optional[str] = None) -> float:
        stat = stat or self.config.latency_stat
        key = (p.name, stat)
        tab = self._tables.get(key)
        if tab is None:  # service time at integer batch sizes 0..max_batch (0 mirrors 1)
            tab = [p.service_ms(max(1, b), stat) for b in range(self.config.max_batch + 1)]
            self._tables[key] = tab
        scale = self.scales[self._stage[p.name]]
        if b >= len(tab) - 1:
            return scale * (tab[-1] if b == len(tab) - 1 else p.service_ms(b, stat))
        lo = int(b)
        return scale * (tab[lo] + (tab[lo + 1] - tab[lo]) * (b - lo))

    def _capacity(self, p: PointProfile) -> float:
        c = self.config
        best = 0.0
        for b in range(1, c.max_batch + 1):
            if c.max_wait_ms + 2 * self._s(p, b) <= c.slo_ms:
                best = max(best, 1000.0 * b / self._s(p, b, c.throughput_stat))
        return best

    def limit_qps(self, p: PointProfile, margin: Optional[float] = None, noisy: bool = False) -> float:
        """The load ``p`` takes at ``margin`` (default the config's): that share of its SLO capacity or its
        queueing capacity x ``margin / config.margin`` (a stricter step-up margin is stricter on both).
        ``noisy``: the limit for the fast rate estimate, whose Poisson noise at rate ``q`` is
        ``sqrt(q / (2 rate_tau_s))``; the queueing capacity gets ``rate_noise_z`` of it, so a low rate's
        noise alone does not send the point down (the margin already holds it at high rates)."""
        c = self.config
        margin = c.margin if margin is None else margin
        q = self.queueing_capacity[p.name] * margin / c.margin
        if noisy:  # may pass what the point carries: a load held there crosses it within seconds (see tests)
            q += c.rate_noise_z * math.sqrt(q / (2.0 * c.rate_tau_s))
        return max(margin * self.capacity[p.name], q)

    def drain_ms(self, p: PointProfile, n: int) -> float:
        """Time to serve ``n`` queued requests at ``p`` in batches of at most ``max_batch``."""
        if n <= 0:
            return 0.0
        full, rest = divmod(int(n), self.config.max_batch)
        return full * self._s(p, self.config.max_batch) + (self._s(p, rest) if rest else 0.0)

    def _default_max_queue(self, p: PointProfile) -> int:
        c = self.config
        best = 1
        for n in range(1, 64 * c.max_batch):
            if c.max_wait_ms + self._s(p, min(n, c.max_batch)) + self.drain_ms(p, n) <= c.slo_ms:
                best = n
            else:
                break
        return max(1, best)

    def steady_batch(self, p: PointProfile, qps: float) -> Optional[float]:
        """Fixed point ``b = qps * S(b)``; ``None`` if the point cannot keep up at ``max_batch``."""
        c = self.config
        if qps * self._s(p, c.max_batch, c.throughput_stat) / 1000.0 > c.max_batch:
            return None
        b = 1.0
        for _ in range(30):
            nb = min(c.max_batch, max(1.0, qps * self._s(p, b, c.throughput_stat) / 1000.0))
            if abs(nb - b) < 1e-2:
                break
            b = nb
        return b

    def predict_ms(self, point: Union[str, PointProfile], qps: float, queue_len: int = 0) -> float:
        """Predicted latency (ms) of a request arriving now, at ``qps``, behind ``queue_len``."""
        p = point if isinstance(point, PointProfile) else self.profile[point]
        b = self.steady_batch(p, qps)
        if b is None:
            return math.inf
        in_service = self._s(p, b)
        steady = self.config.max_wait_ms + 2 * in_service
        backlog = in_service + self.drain_ms(p, queue_len + 1)
        return max(steady, backlog)

    def feasible(self, p: PointProfile, qps: float, queue_len: int, margin: Optional[float] = None) -> bool:
        """Can ``p`` serve the next batch? The load is within :meth:`limit_qps`, and the ``queue_len``
        requests waiting now (this batch included; the worker is free) drain within the SLO."""
        return qps <= self.limit_qps(p, margin, noisy=margin is None) and self.drain_ms(p, queue_len) <= self.config.slo_ms

    # --- online interface -------------------------------------------------------------------
    def _now(self, now: Optional[float]) -> float:
        return self.clock() if now is None else now

    def qps(self, now: Optional[float] = None) -> float:
        return self.rate.rate(self._now(now))

    def admit(self, queue_len: int, now: Optional[float] = None) -> bool:
        """Record an arrival; ``False`` if the queue (``queue_len`` waiting) is full: reject it."""
        now = self._now(now)
        self.rate.observe(now)
        self.slow_rate.observe(now)
        if queue_len >= self.max_queue:
            self.rejected += 1
            return False
        self.accepted += 1
        return True

    def route(self, n: int = 1, now: Optional[float] = None) -> OperatingPoint:
        """Synchronous callers (``Searcher.search`` with no point): record ``n`` arrivals (the batch;
        there is no queue, so nothing is rejected) and choose."""
        now = self._now(now)
        self.rate.observe(now, n)
        self.slow_rate.observe(now, n)
        self.accepted += n
        return self.choose(n, now)

    def late(self, point, batch: int, waited_ms: float) -> bool:
        """Whether a request that has waited ``waited_ms`` would finish past ``shed_at`` x the SLO in a
        batch of ``batch`` at ``point`` (predicted with the calibrated profile)."""
        return waited_ms + self._s(self.profile[point], batch) > self.config.shed_at * self.config.slo_ms

    def retry_after_s(self) -> float:
        """A hint for rejected clients: time for the cheapest point to drain a full queue (>= 1 s)."""
        return max(1.0, math.ceil(self.drain_ms(self.cheapest, self.max_queue) / 1000.0))

    def batch_wait_s(self, queue_len: int, oldest_arrival: float, now: Optional[float] = None) -> float:
        """Dynamic batching: 0 = dispatch a batch now; else how long to wait for more requests."""
        if queue_len <= 0:
            return math.inf
        if queue_len >= self.config.max_batch:
            return 0.0
        now = self._now(now)
        return max(0.0, oldest_arrival + self.config.max_wait_ms / 1000.0 - now)

    def choose(self, queue_len: int, now: Optional[float] = None, waited_ms: float = 0.0) -> OperatingPoint:
        """The query point of :meth:`choose_config` (the whole choice for a profile without a ranker)."""
        return self.choose_config(queue_len, now, waited_ms).query

    def choose_config(self, queue_len: int, now: Optional[float] = None, waited_ms: float = 0.0) -> ServingConfig:
        """The configuration for the next batch, given ``queue_len`` requests waiting (incl. that batch),
        the oldest of which has waited ``waited_ms``; with a ranker profiled, a joint one (query point,
        ranker point, rerank depth), ``no rerank`` included.

        Two layers (module docstring): the *routed* point (``self.current``) follows the load with
        hysteresis; a burst sends this batch only to a cheaper point, so it does not cost
        ``step_up_after_s`` of lower quality. With ``shed_late`` the drain must finish by the shedding
        threshold instead: a cheaper point beats a refusal.
        """
        now = self._now(now)
        qps = self.rate.rate(now)
        if self.fixed is not None:
            self.last = Decision(self.fixed, qps, queue_len, self.drain_ms(self.ladder[0], queue_len))
            return self.ladder[0].config
        c = self.config
        slow = self.slow_rate.rate(now)
        target = None
        for p in self.ladder:
            limit = self.limit_qps(p, noisy=True)
            if slow <= self.limit_qps(p, c.step_up_margin) and qps <= limit:  # hysteresis: how long has p been comfortable?
                if self._ok_since[p.name] is None:
                    self._ok_since[p.name] = now
            else:
                self._ok_since[p.name] = None
            if target is None and qps <= limit:
                target = p
        if target is None:
            target = self.cheapest
        cur = self._index[self._current]
        new = self._current
        if self._index[target.name] > cur:
            new = target.name  # load beyond the current point's capacity: step down at once
        else:
            for p in self.ladder[:cur]:  # better points, best first
                since = self._ok_since[p.name]
                if since is not None and now - since >= c.step_up_after_s:
                    new = p.name
                    break
        if new != self._current:
            self.switches.append((now, self._current, new))
            self._current = new
        budget = c.slo_ms * (c.shed_at if c.shed_late else 1.0) - waited_ms
        chosen = next((p for p in self.ladder[self._index[new]:] if self.drain_ms(p, queue_len) <= budget), self.cheapest)
        if chosen.name != new:
            self.burst_batches += 1
        self.last = Decision(chosen.name, qps, queue_len, self.drain_ms(chosen, queue_len))
        return chosen.config

    def run_summary(self) -> Dict[str, float]:
        """What a load run reports about the router at its end (the simulations' summaries)."""
        return {"calibration_scale": self.scale, "calibration_scale_rerank": self.scales["rerank"],
                "burst_batches": self.burst_batches}

    def describe(self) -> List[Dict[str, float]]:
        """Per point: quality, SLO and queueing capacity (qps), service time at batch 1 and ``max_batch``."""
        return [
            {
                "point": p.name,
                "quality": self.profile.quality(p.name),
                "capacity_qps": self.capacity[p.name],
                "queueing_capacity_qps": self.queueing_capacity[p.name],
                "s1_ms": self._s(p, 1),
                "smax_ms": self._s(p, self.config.max_batch),
            }
            for p in self.ladder
        ]
