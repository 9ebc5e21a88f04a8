"""Operating-point profile: the measured cost and quality of every operating point.

The router only ever uses numbers from this table, measured on the machine that serves:

* ``latency_ms[batch_size] = {"median": ..., "p90": ...}`` -- wall time of one
  ``Searcher.search_texts(batch, k, point)`` call (query encoding + FAISS search) for batch
  sizes 1, 2, 4, ..., 64;
* ``quality = {metric: value}`` -- nDCG@k, MRR@k, Recall@k (with qrels) and answer-match
  accuracy@k (answer strings) of the point on a validation query set;
* ``pareto`` -- False for points that another point beats on both cost and quality; the router
  never routes to those.

Stored as JSON under ``"profile"`` in the experiment's ``manifest.json``::

    {"profile": {"version": 1, "created": "...", "machine": {...}, "k": 10,
                 "metric": "ndcg@10", "batch_sizes": [1, 2, ..., 64],
                 "points": {"L6-H12-F1536-D384": {"params": ..., "flops": ...,
                            "latency_ms": {"1": {"median": 9.1, "p90": 9.8}, ...},
                            "quality": {"ndcg@10": 0.81, ...}, "pareto": true}, ...}}}

Batched service time between measured batch sizes is interpolated linearly in the batch size
(and extrapolated from the last two sizes above the largest); see :meth:`PointProfile.service_ms`.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Union,
)

from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.index import manifest as mf
from elasticdenser.operating_point import OperatingPoint, ServingConfig

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "PROFILE_VERSION",
    "PointProfile",
    "Profile",
    "mark_pareto",
    "save_profile",
    "load_profile",
    "check_profile_model",
]

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
PROFILE_VERSION = 1


@dataclass
class PointProfile:
    """Measured cost and quality of one operating point."""

    name: str
    latency_ms: Dict[int, Dict[str, float]]  # batch size -> {"median": ms, "p90": ms}
    quality: Dict[str, float]
    params: Optional[float] = None
    flops: Optional[float] = None
    pareto: bool = True

    def __post_init__(self) -> None:
        self.latency_ms = {int(b): {s: float(v) for s, v in d.items()} for b, d in self.latency_ms.items()}
        if not self.latency_ms:
            raise InvalidInputError(f"profile of {self.name} has no latency measurements")
        for b, d in self.latency_ms.items():
            if b < 1 or "median" not in d or "p90" not in d:
                raise InvalidInputError(f"profile of {self.name}: latency_ms[{b}] needs 'median' and 'p90' (batch size >= 1)")
        self._sizes = sorted(self.latency_ms)

    @property
    def config(self) -> ServingConfig:
        """What this entry serves: a query point, or a query point + ranker point at a rerank depth."""
        return ServingConfig.parse(self.name)

    @property
    def point(self) -> OperatingPoint:
        """The query point (of a joint configuration: its first stage)."""
        return self.config.query

    @property
    def batch_sizes(self) -> List[int]:
        return list(self._sizes)

    def service_ms(self, batch: float, stat: str = "median") -> float:
        """Service time (ms) of one batch of ``batch`` queries, interpolated from the table.

        Linear in the batch size between measured sizes; below the smallest measured size the
        smallest size's time; above the largest, extrapolated along the last segment (never
        below the largest measured value).
        """
        sizes = self._sizes
        batch = max(float(batch), 1.0)
        vals = [self.latency_ms[b][stat] for b in sizes]
        if batch <= sizes[0]:
            return vals[0]
        for i in range(1, len(sizes)):
            if batch <= sizes[i]:
                b0, b1 = sizes[i - 1], sizes[i]
                return vals[i - 1] + (vals[i] - vals[i - 1]) * (batch - b0) / (b1 - b0)
        if len(sizes) == 1:
            return vals[0] * batch / sizes[0]
        b0, b1 = sizes[-2], sizes[-1]
        slope = max(0.0, (vals[-1] - vals[-2]) / (b1 - b0))
        return vals[-1] + slope * (batch - b1)

    def throughput_qps(self, batch: int, stat: str = "median") -> float:
        return 1000.0 * batch / self.service_ms(batch, stat)

    def cost(self) -> float:
        """Scalar cost used for the Pareto test: mean median latency over the measured batch sizes."""
        return statistics.fmean(self.latency_ms[b]["median"] for b in self._sizes)

    def to_json(self) -> Dict[str, Any]:
        return {
            "params": self.params,
            "flops": self.flops,
            "latency_ms": {str(b): dict(self.latency_ms[b]) for b in self._sizes},
            "quality": dict(self.quality),
            "pareto": bool(self.pareto),
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> "PointProfile":
        return cls(
            name=name,
            latency_ms=data["latency_ms"],
            quality=dict(data.get("quality", {})),
            params=data.get("params"),
            flops=data.get("flops"),
            pareto=bool(data.get("pareto", True)),
        )


@dataclass
class Profile:
    """The operating-point table of one experiment on one machine."""

    points: Dict[str, PointProfile]
    metric: str
    k: int = 10
    batch_sizes: List[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    machine: Dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.points:
            raise InvalidInputError("a profile needs at least one operating point")
        for p in self.points.values():
            if self.metric not in p.quality:
                raise InvalidInputError(f"profile of {p.name} has no quality value for metric {self.metric!r}")

    # --- queries -------------------------------------------------------------------------
    def quality(self, name: Union[str, OperatingPoint]) -> float:
        return float(self.points[str(name)].quality[self.metric])

    def ordered(self, pareto_only: bool = True) -> List[PointProfile]:
        """Points by quality, best first (ties: cheaper first)."""
        pts = [p for p in self.points.values() if p.pareto or not pareto_only]
        return sorted(pts, key=lambda p: (-p.quality[self.metric], p.cost(), p.name))

    @property
    def best(self) -> PointProfile:
        return self.ordered()[0]

    @property
    def cheapest(self) -> PointProfile:
        return min((p for p in self.points.values() if p.pareto), key=lambda p: (p.cost(), p.name))

    def __getitem__(self, name: Union[str, OperatingPoint]) -> PointProfile:
        return self.points[str(name)]

    def __contains__(self, name: object) -> bool:
        return str(name) in self.points

    # --- JSON ----------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        out = {
            "version": PROFILE_VERSION,
            "created": self.created,
            "machine": dict(self.machine),
            "k": self.k,
            "metric": self.metric,
            "batch_sizes": list(self.batch_sizes),
            "points": {name: p.to_json() for name, p in self.points.items()},
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Profile":
        known = {"version", "created", "machine", "k", "metric", "batch_sizes", "points"}
        if "points" not in data or "metric" not in data:
            raise InvalidInputError("not an operating-point profile: needs 'points' and 'metric'")
        if data.get("version", PROFILE_VERSION) != PROFILE_VERSION:
            raise InvalidInputError(
                f"profile version {data.get('version')!r} is not one this release reads ({PROFILE_VERSION}); "
                "re-run `elasticdenser profile`"
            )
        return cls(
            points={name: PointProfile.from_json(name, d) for name, d in data["points"].items()},
            metric=str(data["metric"]),
            k=int(data.get("k", 10)),
            batch_sizes=[int(b) for b in data.get("batch_sizes", DEFAULT_BATCH_SIZES)],
            machine=dict(data.get("machine", {})),
            created=str(data.get("created", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )


def mark_pareto(points: Iterable[PointProfile], metric: str) -> None:
    """Set ``pareto=False`` on every point that another point dominates.

    ``q`` dominates ``p`` when ``q`` is no more costly (mean median latency over batch sizes,
    :meth:`PointProfile.cost`) and no worse in quality, and strictly better in at least one.
    """
    pts = list(points)
    for p in pts:
        pc, pq = p.cost(), p.quality[metric]
        p.pareto = not any(
            q is not p
            and q.cost() <= pc
            and q.quality[metric] >= pq
            and (q.cost() < pc or q.quality[metric] > pq)
            for q in pts
        )


# --- manifest I/O (the manifest and its atomic writes are owned by elasticdenser.index) --------
def _experiment_dir(source: Union[str, Path]) -> Path:
    path = Path(source)
    return path.parent if path.name == mf.MANIFEST else path


def save_profile(exp_dir: Union[str, Path], profile: Profile) -> Path:
    """Store ``profile`` under ``"profile"`` in the experiment's manifest (atomic replace)."""
    exp_dir = _experiment_dir(exp_dir)
    mf.update(exp_dir, profile=profile.to_json())
    return exp_dir / mf.MANIFEST


def load_profile(source: Union[str, Path, Mapping[str, Any]]) -> Profile:
    """The profile from an experiment dir, a manifest/profile JSON file, or a dict."""
    if isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        if path.is_dir() or path.name == mf.MANIFEST:
            data = mf.load(_experiment_dir(path))
        else:
            if not path.is_file():
                raise MissingFileError(f"no manifest or profile file at {path}")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data.get("profile"), Mapping):  # a manifest (which also has a "points" list)
        data = data["profile"]
    elif not isinstance(data.get("points"), Mapping):
        raise InvalidInputError(
            f"{source} holds no operating-point profile; run `elasticdenser profile EXP_DIR` first "
            "(the router uses measured numbers only)"
        )
    try:
        return Profile.from_json(data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{source}: malformed profile ({type(exc).__name__}: {exc}); "
                                "re-run `elasticdenser profile`") from None


def check_profile_model(profile: Profile, fingerprint: str, source: Any = "the profile") -> None:
    """Refuse a profile measured on another query model: its latencies and qualities, and so every
    routing decision, describe that model (a profile without a fingerprint predates the check)."""
    measured = profile.extra.get("model_fingerprint")
    if measured and measured != fingerprint:
        raise StateError(f"{source} was measured on model {measured[:16]}..., not on the query model "
                         f"{fingerprint[:16]}... this experiment now holds; re-run `elasticdenser profile`")




