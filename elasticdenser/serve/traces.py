"""Request traces: arrival timestamps (seconds from 0) for the load simulator.

All generated traces are (non-homogeneous) Poisson processes, sampled by thinning with a seeded
numpy generator, so a (spec, seed) pair always gives the same timestamps.

Spec strings (rates may be absolute ``120`` or relative to a reference capacity ``1.5x``)::

    poisson:rate=1x,duration=60
    ramp:lo=0.2x,hi=3x,duration=120,hold=0.2,base=0.1  # lo (base) -> hi (hold) -> lo (base), linear
    spike:base=0.5x,peak=3x,start=20,length=10,duration=60
    day:lo=0.2x,hi=2x,duration=120                # one smooth day: night, peak at noon, night
    file:PATH                                     # one timestamp (s) per line, or first CSV column
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["Trace", "nhpp", "constant_rate", "ramp_rate", "spike_rate", "day_rate", "from_file", "parse_trace"]

RateFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Trace:
    name: str
    times: np.ndarray  # sorted float64 seconds
    duration: float
    rate_fn: Optional[RateFn] = None  # offered rate (qps) over time, when known

    def __len__(self) -> int:
        return len(self.times)


def nhpp(rate_fn: RateFn, duration: float, rate_max: float, seed: int = 0) -> np.ndarray:
    """Arrival times of a Poisson process with rate ``rate_fn(t) <= rate_max`` on [0, duration)."""
    if duration <= 0:
        raise InvalidInputError(f"trace duration must be > 0, got {duration}")
    if rate_max <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_max * duration)
    t = np.sort(rng.uniform(0.0, duration, size=n))
    keep = rng.uniform(0.0, rate_max, size=n) < rate_fn(t)
    return t[keep]


def constant_rate(rate: float) -> RateFn:
    return lambda t: np.full_like(np.asarray(t, dtype=float), rate)


def ramp_rate(lo: float, hi: float, duration: float, hold: float = 0.2, base: float = 0.0) -> RateFn:
    """``lo`` for a ``base`` fraction of the duration, linearly up to ``hi``, ``hi`` for a ``hold``
    fraction, linearly back down, ``lo`` for a final ``base`` fraction."""
    if hold < 0 or base < 0 or hold + 2 * base >= 1:
        raise InvalidInputError(f"ramp needs hold >= 0, base >= 0 and hold + 2*base < 1 (got hold={hold}, base={base})")
    b = duration * base
    up = duration * (1 - hold - 2 * base) / 2

    def fn(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float) - b
        d = duration - 2 * b
        x = np.where(t < up, t / up, np.where(t < d - up, 1.0, (d - t) / up))
        return lo + (hi - lo) * np.clip(x, 0.0, 1.0)

    return fn


def spike_rate(base: float, peak: float, start: float, length: float) -> RateFn:
    return lambda t: np.where((np.asarray(t) >= start) & (np.asarray(t) < start + length), peak, base)


def day_rate(lo: float, hi: float, duration: float) -> RateFn:
    return lambda t: lo + (hi - lo) * (1 - np.cos(2 * math.pi * np.asarray(t, dtype=float) / duration)) / 2


def _number(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"trace spec: {what}={value!r} is not a number") from None


def _rate(value: str, capacity: Optional[float], what: str = "rate") -> float:
    value = value.strip()
    if value.endswith("x"):
        if not capacity:
            raise InvalidInputError(f"relative rate {value!r} needs a reference capacity (the full point's, from a profile)")
        return _number(value[:-1], what) * capacity
    return _number(value, what)


def from_file(path: str) -> Trace:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"trace file {path} not found")
    vals = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.replace(",", " ").split()[0]
        try:
            vals.append(float(first))
        except ValueError:
            if vals:  # a header is fine only on the first line
                raise InvalidInputError(f"{path}: not a timestamp: {first!r}") from None
    if not vals:
        raise InvalidInputError(f"{path}: no timestamps")
    times = np.sort(np.asarray(vals, dtype=float))
    times -= times[0]
    return Trace(f"file:{p.name}", times, float(times[-1]) + 1e-9)


def parse_trace(spec: str, capacity: Optional[float] = None, seed: int = 0) -> Trace:
    """A :class:`Trace` from a spec string (see module docstring)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "file":
        return from_file(rest)
    args: Dict[str, str] = {}
    for part in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = part.partition("=")
        if not eq:
            raise InvalidInputError(f"trace spec {spec!r}: expected key=value, got {part!r}")
        args[key.strip()] = val
    duration = _number(args.pop("duration", "60"), "duration")

    def need(key: str, default: Optional[str] = None) -> float:
        if key not in args and default is None:
            raise InvalidInputError(f"trace spec {spec!r} needs {key}=")
        return _rate(args.pop(key, default), capacity, key)

    if kind == "poisson":
        rate = need("rate")
        fn, peak = constant_rate(rate), rate
    elif kind == "ramp":
        lo, hi = need("lo"), need("hi")
        fn = ramp_rate(lo, hi, duration, _number(args.pop("hold", "0.2"), "hold"), _number(args.pop("base", "0"), "base"))
        peak = max(lo, hi)
    elif kind == "spike":
        base, peak_rate = need("base"), need("peak")
        start = _number(args.pop("start", str(duration / 3)), "start")
        length = _number(args.pop("length", str(duration / 6)), "length")
        fn, peak = spike_rate(base, peak_rate, start, length), max(base, peak_rate)
    elif kind == "day":
        lo, hi = need("lo"), need("hi")
        fn, peak = day_rate(lo, hi, duration), max(lo, hi)
    else:
        raise InvalidInputError(f"unknown trace kind {kind!r}; use poisson, ramp, spike, day or file:PATH")
    if args:
        raise InvalidInputError(f"trace spec {spec!r}: unknown parameters {sorted(args)}")
    return Trace(spec, nhpp(fn, duration, peak, seed), duration, fn)
