"""Load simulation: replay a request trace against the router and static policies.

Two modes, one report format:

* :func:`simulate` -- a discrete-event simulation driven by the measured profile. One worker
  serves batches back to back, exactly like :class:`elasticdenser.serve.service.RoutedSearcher`; batch
  formation, admission (bounded queue) and the point choice are made by the production
  :class:`~elasticdenser.serve.router.Router` with simulated time. A batch of ``b`` at point ``p`` takes
  a lognormal time with the profile's median ``S_p(b)`` and p90 (interpolated). Deterministic for
  a seed; about a million requests per ~10 s.
* real runs (:mod:`elasticdenser.serve.replay`): a bounded load generator on this machine sends
  the trace's requests at their timestamps to an in-process ``RoutedSearcher`` or to the HTTP
  server and measures what comes back; they report through :func:`summarize` too.

Policies: ``router``, ``static-full`` (the largest point), ``static-smallest``, ``static:NAME``.
Static policies get the same batching as the router, only the point is fixed; their queue is
unbounded in practice (``STATIC_MAX_QUEUE``) unless ``static_max_queue``/``max_queue`` is given,
i.e. they model a server without the router's admission control.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from elasticdenser.atomic import atomic_path
from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import ServingConfig
from elasticdenser.serve.profile import Profile
from elasticdenser.serve.router import Router, RouterConfig

__all__ = ["Z90", "SERIES_FIELDS", "full_point", "smallest_point", "resolve_policy", "STATIC_MAX_QUEUE",
           "make_router", "PolicyResult", "summarize", "phase_summary", "simulate", "simulate_policies",
           "write_csv", "format_summary", "plot", "ramp_summary"]

Z90 = 1.2815515655446004  # standard normal 0.9 quantile

SERIES_FIELDS = [
    "policy", "t", "offered_qps", "throughput_qps", "rejected", "p50_ms", "p95_ms", "p99_ms",
    "mean_quality", "point", "slo_ok",
]


# --- policies --------------------------------------------------------------------------------
def _size(name: str):
    c = ServingConfig.parse(name)
    return (c.query, c.ranker is not None, c.ranker or c.query, c.depth)


def full_point(profile: Profile) -> str:
    """The largest entry: the full query point, reranked by the full ranker at the deepest depth
    when the profile has a ranker."""
    return max(profile.points, key=_size)


def smallest_point(profile: Profile) -> str:
    """The smallest query point, not reranked."""
    return min(profile.points, key=_size)


def resolve_policy(profile: Profile, policy: str) -> Optional[str]:
    """``None`` for the router, else the point name of a static policy."""
    policy = policy.strip()
    if policy == "router":
        return None
    if policy == "static-full":
        return full_point(profile)
    if policy == "static-smallest":
        return smallest_point(profile)
    if policy.startswith("static:"):
        name = ServingConfig.parse(policy[len("static:"):]).name
        if name not in profile:
            raise InvalidInputError(f"policy {policy!r}: point {name} is not in the profile ({', '.join(profile.points)})")
        return name
    raise InvalidInputError(f"unknown policy {policy!r}; use router, static-full, static-smallest or static:POINT")


#: Queue bound of the static baselines unless ``static_max_queue`` says otherwise: a plain server
#: without the router's admission control (large enough to be unbounded in practice).
STATIC_MAX_QUEUE = 100_000


def make_router(profile: Profile, policy: str, config: Optional[RouterConfig] = None, clock=time.monotonic,
                points: Optional[Sequence[str]] = None, static_max_queue: Optional[int] = STATIC_MAX_QUEUE) -> Router:
    """The router, or a static policy (fixed point) with ``static_max_queue`` (None: the router's bound)."""
    fixed = resolve_policy(profile, policy)
    config = config or RouterConfig()
    if fixed is None:
        return Router(profile, config, clock, points=points)
    if static_max_queue is not None and config.max_queue is None:
        config = dataclasses.replace(config, max_queue=static_max_queue)
    return Router.static(profile, fixed, config, clock)


# --- results ---------------------------------------------------------------------------------
@dataclass
class PolicyResult:
    policy: str
    summary: Dict[str, Any]
    series: List[Dict[str, Any]]
    switches: List[Tuple[float, str, str]] = field(default_factory=list)


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def summarize(
    policy: str,
    arrivals: np.ndarray,
    latency_ms: np.ndarray,
    points: Sequence[Optional[str]],
    profile: Profile,
    slo_ms: float,
    duration: float,
    window_s: float = 1.0,
    switches: Sequence[Tuple[float, str, str]] = (),
) -> PolicyResult:
    """Per-policy figures and a per-window time series (requests binned by arrival time).

    ``latency_ms`` is NaN for rejected requests; ``points[i]`` is the point that served request i.
    """
    arrivals = np.asarray(arrivals, dtype=float)
    latency_ms = np.asarray(latency_ms, dtype=float)
    served = ~np.isnan(latency_ms)
    names = sorted({p for p in points if p is not None})
    qual_of = {n: profile.quality(n) if n in profile else float("nan") for n in names}
    code = {n: i for i, n in enumerate(names)}
    pidx = np.array([code[p] if p is not None else -1 for p in points], dtype=int)
    quality = np.array([qual_of[n] for n in names] + [np.nan])[pidx]  # -1 -> nan
    lat = latency_ms[served]
    n = len(arrivals)
    duration = max(duration, float(arrivals.max()) if n else 0.0, 1e-9)
    summary = {
        "policy": policy,
        "requests": int(n),
        "served": int(served.sum()),
        "rejected": int(n - served.sum()),
        # served per second until the last answer left (a static policy may drain long after the trace)
        "throughput_qps": float(served.sum() / max(duration, float(np.max(arrivals[served] + lat / 1000.0))))
        if served.any() else 0.0,
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "p99_ms": _pct(lat, 99),
        "slo_violation_rate": float((lat > slo_ms).mean()) if len(lat) else 0.0,
        "rejection_rate": float((~served).mean()) if n else 0.0,
        "mean_quality": float(np.nanmean(quality[served])) if served.any() else float("nan"),
        "switches": len(switches),
    }
    nwin = max(1, int(math.ceil(duration / window_s)))
    win = np.minimum((arrivals / window_s).astype(int), nwin - 1) if n else np.zeros(0, dtype=int)
    series = []
    bounds = np.searchsorted(win, np.arange(nwin + 1))  # arrivals are sorted
    ok_windows = 0
    served_windows = 0
    for w in range(nwin):
        a, b = bounds[w], bounds[w + 1]
        s = served[a:b]
        lat = latency_ms[a:b][s]
        pw = pidx[a:b][s]
        point = names[Counter(pw.tolist()).most_common(1)[0][0]] if len(pw) else ""
        p99 = _pct(lat, 99)
        ok = bool(len(lat) == 0 or p99 <= slo_ms)
        if len(lat):
            served_windows += 1
            ok_windows += ok
        series.append({
            "policy": policy,
            "t": w * window_s,
            "offered_qps": (b - a) / window_s,
            "throughput_qps": int(s.sum()) / window_s,
            "rejected": int((~s).sum()),
            "p50_ms": _pct(lat, 50),
            "p95_ms": _pct(lat, 95),
            "p99_ms": p99,
            "mean_quality": float(np.nanmean(quality[a:b][s])) if len(lat) else float("nan"),
            "point": point,
            "slo_ok": int(ok),
        })
    summary["windows"] = nwin
    summary["windows_p99_within_slo"] = ok_windows / served_windows if served_windows else 1.0
    return PolicyResult(policy, summary, series, list(switches))


def phase_summary(result: PolicyResult, start: float, end: float, slo_ms: float) -> Dict[str, float]:
    """Windows in [start, end): share with p99 within the SLO, and served-weighted mean quality."""
    rows = [r for r in result.series if start <= r["t"] < end]
    served = [r for r in rows if r["throughput_qps"] > 0]
    w = np.array([r["throughput_qps"] for r in served], dtype=float)
    q = np.array([r["mean_quality"] for r in served], dtype=float)
    return {
        "windows": len(rows),
        "windows_p99_within_slo": float(np.mean([r["slo_ok"] for r in served])) if served else 1.0,
        "mean_quality": float((w * q).sum() / w.sum()) if w.sum() else float("nan"),
        "max_p99_ms": float(np.nanmax([r["p99_ms"] for r in served])) if served else float("nan"),
        "rejected": int(sum(r["rejected"] for r in rows)),
    }


# --- discrete-event simulation ---------------------------------------------------------------
class _ServiceTimes:
    """Lognormal batch service times matching the profile's median and p90 per batch size."""

    def __init__(self, profile: Profile, seed: int):
        self.profile = profile
        self.rng = np.random.default_rng(seed)
        self._z = np.empty(0)
        self._i = 0
        self._cache: Dict[Tuple[str, int], Tuple[float, float]] = {}

    def __call__(self, point: str, b: int) -> float:
        key = (point, b)
        if key not in self._cache:
            p = self.profile[point]
            med = p.service_ms(b, "median")
            p90 = max(med, p.service_ms(b, "p90"))
            self._cache[key] = (med, math.log(p90 / med) / Z90 if med > 0 else 0.0)
        med, sigma = self._cache[key]
        if self._i >= len(self._z):
            self._z = self.rng.standard_normal(65536)
            self._i = 0
        z = self._z[self._i]
        self._i += 1
        return med * math.exp(sigma * z) / 1000.0


def simulate(
    times: Union[np.ndarray, Sequence[float]],
    profile: Profile,
    policy: str = "router",
    config: Optional[RouterConfig] = None,
    seed: int = 0,
    window_s: float = 1.0,
    duration: Optional[float] = None,
    static_max_queue: Optional[int] = STATIC_MAX_QUEUE,
) -> PolicyResult:
    """Discrete-event simulation of one policy over arrival ``times`` (seconds, sorted)."""
    config = config or RouterConfig()
    times = np.asarray(times, dtype=float)
    router = make_router(profile, policy, config, clock=lambda: 0.0, static_max_queue=static_max_queue)
    service = _ServiceTimes(profile, seed)
    n = len(times)
    latency = np.full(n, np.nan)
    served_by: List[Optional[str]] = [None] * n
    queue: deque = deque()  # request indices waiting
    tl = times.tolist()
    B = config.max_batch
    i = 0
    t_free = 0.0
    while i < n or queue:
        # arrivals while the worker is busy join the queue (or are rejected) in time order
        while i < n and tl[i] <= t_free:
            if router.admit(len(queue), tl[i]):
                queue.append(i)
            i += 1
        if not queue:
            t_free = tl[i]  # idle until the next arrival
            continue
        now = t_free
        wait = router.batch_wait_s(len(queue), tl[queue[0]], now)
        while wait > 0:
            deadline = now + wait
            if i < n and tl[i] <= deadline:
                now = tl[i]
                if router.admit(len(queue), now):
                    queue.append(i)
                i += 1
                wait = router.batch_wait_s(len(queue), tl[queue[0]], now)
            else:
                now = deadline
                wait = 0.0
        point = router.choose_config(len(queue), now, (now - tl[queue[0]]) * 1000.0).name
        b = min(len(queue), B)
        took = service(point, b)
        router.observe_service(point, b, took * 1000.0)
        done = now + took
        for _ in range(b):
            j = queue.popleft()
            latency[j] = (done - tl[j]) * 1000.0
            served_by[j] = point
        t_free = done
    span = duration if duration is not None else (float(times[-1]) if n else 0.0)
    res = summarize(policy, times, latency, served_by, profile, config.slo_ms, span, window_s, router.switches)
    res.summary.update(router.run_summary())
    return res


def simulate_policies(
    times: np.ndarray,
    profile: Profile,
    policies: Sequence[str] = ("router", "static-full", "static-smallest"),
    config: Optional[RouterConfig] = None,
    seed: int = 0,
    window_s: float = 1.0,
    duration: Optional[float] = None,
    static_max_queue: Optional[int] = STATIC_MAX_QUEUE,
) -> List[PolicyResult]:
    return [simulate(times, profile, p, config, seed, window_s, duration, static_max_queue) for p in policies]




# --- output ----------------------------------------------------------------------------------
def write_csv(results: Sequence[PolicyResult], path: Union[str, Path]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SERIES_FIELDS)
        w.writeheader()
        for r in results:
            for row in r.series:
                w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def format_summary(results: Sequence[PolicyResult], slo_ms: float) -> str:
    head = (f"{'policy':<28} {'thrpt/s':>8} {'p50ms':>7} {'p95ms':>7} {'p99ms':>8} {'>SLO':>6} "
            f"{'reject':>6} {'quality':>7} {'win_ok':>6}")
    lines = [f"SLO: {slo_ms:g} ms (p99 per 1-s window for win_ok)", head]
    for r in results:
        s = r.summary
        lines.append(
            f"{s['policy']:<28} {s['throughput_qps']:8.1f} {s['p50_ms']:7.1f} {s['p95_ms']:7.1f} {s['p99_ms']:8.1f} "
            f"{100 * s['slo_violation_rate']:5.1f}% {100 * s['rejection_rate']:5.1f}% {s['mean_quality']:7.4f} "
            f"{100 * s['windows_p99_within_slo']:5.1f}%"
        )
    return "\n".join(lines)


def plot(results: Sequence[PolicyResult], path: Union[str, Path], profile: Profile, slo_ms: float,
         title: str = "") -> Optional[Path]:
    """PNG: offered QPS, chosen point, p99 latency and quality over time (needs the plots extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = sorted(profile.points, key=_size)
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    for r in results:
        t = [row["t"] for row in r.series]
        if r is results[0]:
            axes[0].plot(t, [row["offered_qps"] for row in r.series], color="k", label="offered")
        axes[0].plot(t, [row["throughput_qps"] for row in r.series], label=f"{r.policy} served")
        axes[1].step(t, [names.index(row["point"]) if row["point"] else np.nan for row in r.series], where="post",
                     label=r.policy)
        axes[2].plot(t, [row["p99_ms"] for row in r.series], label=r.policy)
        axes[3].plot(t, [row["mean_quality"] for row in r.series], label=r.policy)
    axes[0].set_ylabel("QPS")
    axes[1].set_yticks(range(len(names)))
    axes[1].set_yticklabels(names, fontsize=7)
    axes[1].set_ylabel("point")
    axes[2].axhline(slo_ms, color="r", ls="--", lw=1, label="SLO")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p99 ms (1-s)")
    axes[3].set_ylabel(profile.metric)
    axes[3].set_xlabel("time (s)")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ramp_summary(profile: Profile, config: Optional[RouterConfig] = None, duration: float = 60.0, seed: int = 0,
                 lo: float = 0.2, hi: float = 3.0) -> str:
    """A short discrete-event summary for the end of the main job: router vs static-full vs
    static-smallest on a ramp from ``lo``x to ``hi``x of the full point's SLO capacity and back."""
    from elasticdenser.serve.traces import parse_trace

    config = config or RouterConfig()
    full = full_point(profile)
    cap = Router.static(profile, full, config).capacity[full]
    if cap <= 0:
        return (f"load simulation skipped: {full} cannot meet a {config.slo_ms:g} ms SLO on the profiled machine "
                "(its batch-1 service time is too long); pass a larger SLO")
    trace = parse_trace(f"ramp:lo={lo}x,hi={hi}x,duration={duration:g},hold=0.2,base=0.15", cap, seed)
    results = simulate_policies(trace.times, profile, config=config, seed=seed, duration=trace.duration)
    head = (f"load simulation (discrete-event, measured profile): ramp {lo}x -> {hi}x -> {lo}x of {full}'s "
            f"SLO capacity ({cap:.0f} qps), {len(trace)} requests over {duration:g} s")
    return head + "\n" + format_summary(results, config.slo_ms)
