"""A routed search service: bounded queue + dynamic batching + router, around any searcher.

The searcher only needs ``points`` and ``search_texts(texts, k, point) -> list[list[Hit]]``
(the :class:`elasticdenser.searcher.Searcher` contract). One worker thread serves batches back to
back; the :class:`~elasticdenser.serve.router.Router` decides admission, when a batch is ready and
which operating point serves it. Nothing accepted is dropped (unless ``RouterConfig.shed_late``
answers a request that can no longer meet, or did not meet, the SLO with the same 503 as a refusal): :meth:`RoutedSearcher.close`
serves the remaining queue before it returns.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from elasticdenser.data.types import check_k, is_blank
from elasticdenser.errors import InvalidInputError, StateError
from elasticdenser.operating_point import OperatingPoint, PointLike, ServingConfig
from elasticdenser.serve.measure import encoder_backend, pin_small_batch_threads
from elasticdenser.serve.profile import Profile, load_profile
from elasticdenser.serve.router import Overloaded, Router, RouterConfig

__all__ = ["LATENCY_BUCKETS", "RoutedResult", "Metrics", "RoutedSearcher", "servable_configs"]

#: Prometheus latency histogram buckets (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class RoutedResult:
    hits: List[Any]
    point: OperatingPoint  #: the query point that served this request
    latency_ms: float  #: queueing + batched service, as seen by the service
    queue_ms: float
    batch_size: int
    done_at: float = 0.0  #: service clock when the result was set
    config: Optional[ServingConfig] = None  #: the whole configuration (with the ranker point and depth, if any)


@dataclass
class _Request:
    text: str
    k: int
    point: Optional[ServingConfig]  #: asked for (a query point) or, once batched, what serves it
    arrival: float
    future: Future = field(default_factory=Future)


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Dict[str, int] = {}  # served, by point
        self.rejections = 0
        self.errors = 0
        self.bad_requests = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def served(self, point: str, latency_s: float) -> None:
        with self.lock:
            self.requests[point] = self.requests.get(point, 0) + 1
            i = 0
            while i < len(LATENCY_BUCKETS) and latency_s > LATENCY_BUCKETS[i]:
                i += 1
            self.buckets[i] += 1
            self.latency_sum += latency_s
            self.latency_count += 1

    def render(self, qps: float, current_point: str, queue_len: int, points: Sequence[str]) -> str:
        with self.lock:
            out = [
                "# HELP elasticdenser_requests_total Search requests served, by operating point.",
                "# TYPE elasticdenser_requests_total counter",
            ]
            for p in points:
                out.append(f'elasticdenser_requests_total{{point="{p}"}} {self.requests.get(p, 0)}')
            out += [
                "# HELP elasticdenser_rejections_total Requests refused (503): queue full, or (shed_late) SLO out of reach.",
                "# TYPE elasticdenser_rejections_total counter",
                f"elasticdenser_rejections_total {self.rejections}",
                "# HELP elasticdenser_errors_total Requests that failed inside the searcher.",
                "# TYPE elasticdenser_errors_total counter",
                f"elasticdenser_errors_total {self.errors}",
                "# HELP elasticdenser_bad_requests_total Requests refused as invalid (422).",
                "# TYPE elasticdenser_bad_requests_total counter",
                f"elasticdenser_bad_requests_total {self.bad_requests}",
                "# HELP elasticdenser_request_latency_seconds Queueing plus batched service time.",
                "# TYPE elasticdenser_request_latency_seconds histogram",
            ]
            cum = 0
            for le, c in zip(LATENCY_BUCKETS, self.buckets):
                cum += c
                out.append(f'elasticdenser_request_latency_seconds_bucket{{le="{le}"}} {cum}')
            out.append(f'elasticdenser_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            out.append(f"elasticdenser_request_latency_seconds_sum {self.latency_sum:.6f}")
            out.append(f"elasticdenser_request_latency_seconds_count {self.latency_count}")
        out += [
            "# HELP elasticdenser_qps_estimate Current arrival-rate estimate (EWMA), requests per second.",
            "# TYPE elasticdenser_qps_estimate gauge",
            f"elasticdenser_qps_estimate {qps:.4f}",
            "# HELP elasticdenser_queue_length Requests waiting for a batch.",
            "# TYPE elasticdenser_queue_length gauge",
            f"elasticdenser_queue_length {queue_len}",
            "# HELP elasticdenser_chosen_point The operating point the router chose last (1 = chosen).",
            "# TYPE elasticdenser_chosen_point gauge",
        ]
        for p in points:
            out.append(f'elasticdenser_chosen_point{{point="{p}"}} {1 if p == current_point else 0}')
        return "\n".join(out) + "\n"


def _searcher_profile(searcher: Any) -> Profile:
    """The profile stored with a searcher's experiment (manifest dict or experiment dir)."""
    manifest = getattr(searcher, "manifest", None)
    if isinstance(manifest, dict) and "profile" in manifest:
        return load_profile(manifest)
    for attr in ("exp_dir", "path", "directory"):
        d = getattr(searcher, attr, None)
        if d is not None:
            return load_profile(d)
    raise InvalidInputError("no operating-point profile for this searcher; run `elasticdenser profile EXP_DIR` first")


def servable_configs(searcher: Any, profile: Profile) -> List[str]:
    """What a router over ``searcher`` may choose: its query points, and the profile's joint
    configurations of those points with its attached ranker's points (none without a ranker)."""
    queries = [str(p) for p in searcher.points]
    ranker = getattr(searcher, "ranker", None)
    if ranker is None:
        return queries
    rankers = {p.name for p in ranker.default_points()}
    return queries + [name for name, entry in profile.points.items() if entry.config.ranker is not None
                      and entry.config.query.name in queries and entry.config.ranker.name in rankers]


class RoutedSearcher:
    """Thread-safe routed front end of a searcher; use as a context manager or call start()/close()."""

    def __init__(
        self,
        searcher: Any,
        profile: Optional[Profile] = None,
        router: Optional[Router] = None,
        config: Optional[RouterConfig] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.searcher = searcher
        self.points: List[OperatingPoint] = [OperatingPoint.parse(p) for p in searcher.points]
        self.point_names = [p.name for p in self.points]
        if router is None:
            profile = profile or _searcher_profile(searcher)
            router = Router(profile, config, clock, points=servable_configs(searcher, profile))
        pin_small_batch_threads(searcher, router.profile)
        self.router = router
        #: what /metrics counts: the query points and the joint configurations the router may choose
        self.config_names = self.point_names + [p.name for p in router.ladder if p.name not in self.point_names]
        self.clock = router.clock
        self.metrics = Metrics()
        self._queue: Deque[_Request] = deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One tiny search per point, so first requests do not pay for loading indexes and caches
        (and the router's calibration does not mistake a cold start for a slow machine)."""
        for point in self.points:
            self.searcher.search_texts(["warm up"], 1, point)

    def start(self, warm_up: bool = False) -> "RoutedSearcher":
        if warm_up and self._thread is None:
            self.warm_up()
        with self._cond:
            if self._thread is not None:
                return self
            self._accepting, self._stop = True, False
            self._thread = threading.Thread(target=self._worker, name="elasticdenser-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop accepting; serve everything already accepted; stop the worker."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "RoutedSearcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return len(self._queue)

    def validate_point(self, point: PointLike) -> Optional[OperatingPoint]:
        """``None`` (or ``""`` from a form): routed; else a point this service serves (its name is
        parsed here, at the edge; everything behind it passes :class:`OperatingPoint`)."""
        if point is None or point == "":
            return None
        if isinstance(point, str) and point.strip() == "full":  # as ElasticSpace.resolve reads it
            return max(self.points)
        parsed = OperatingPoint.parse(point)  # InvalidOperatingPoint (an InvalidInputError) if malformed
        if parsed not in self.points:
            raise InvalidInputError(f"operating point {parsed} is not served here; available: {', '.join(self.point_names)}")
        return parsed

    def submit(self, query: str, k: int = 10, point: Union[str, OperatingPoint, None] = None) -> "Future[RoutedResult]":
        """Queue one query; raises :class:`Overloaded` at once if the bounded queue is full."""
        if is_blank(query):
            raise InvalidInputError("query must be a non-empty string (visible characters, not only whitespace)")
        k = check_k(k)
        name = self.validate_point(point)
        with self._cond:
            if not self._accepting:
                raise StateError("the search service is not running (call start() or use it as a context manager)")
            now = self.clock()
            if not self.router.admit(len(self._queue), now):
                self.metrics.rejections += 1
                raise Overloaded(
                    f"overloaded: {len(self._queue)} requests already queued (limit {self.router.max_queue}); retry later",
                    self.router.retry_after_s(),
                )
            req = _Request(query, k, None if name is None else ServingConfig(name), now)
            self._queue.append(req)
            self._cond.notify()
        return req.future

    def search(self, query: str, k: int = 10, point: Union[str, OperatingPoint, None] = None,
               timeout: Optional[float] = None) -> RoutedResult:
        return self.submit(query, k, point).result(timeout)

    # --- worker ---------------------------------------------------------------------------
    def _next_batch(self) -> Optional[List[_Request]]:
        with self._cond:
            while True:
                if not self._queue:
                    if self._stop:
                        return None
                    self._cond.wait()
                    continue
                now = self.clock()
                wait = 0.0 if self._stop else self.router.batch_wait_s(len(self._queue), self._queue[0].arrival, now)
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                head = self._queue[0]
                point = head.point if head.point is not None else \
                    self.router.choose_config(len(self._queue), now, (now - head.arrival) * 1000.0)
                batch: List[_Request] = []
                rest: Deque[_Request] = deque()
                for r in self._queue:
                    if len(batch) < self.router.config.max_batch and r.point == head.point:
                        batch.append(r)
                    else:
                        rest.append(r)
                self._queue = rest
                if self.router.config.shed_late:
                    batch = self._shed_late(batch, point, now)
                    if not batch:
                        continue
                for r in batch:
                    r.point = point
                return batch

    def _shed_late(self, batch: List[_Request], point: ServingConfig, now: float) -> List[_Request]:
        """Answer the requests of ``batch`` that can no longer meet the SLO with ``Overloaded``
        (503 + Retry-After over HTTP, counted as rejections); the rest are served."""
        keep = [r for r in batch if not self.router.late(point.name, len(batch), (now - r.arrival) * 1000.0)]
        kept = {id(r) for r in keep}
        for r in batch:
            if id(r) not in kept:
                self._refuse_late(r, f"waited {(now - r.arrival) * 1000.0:.0f} ms and would finish too close to or past")
        return keep

    def _refuse_late(self, r: _Request, what: str) -> None:
        self.metrics.rejections += 1
        r.future.set_exception(Overloaded(f"overloaded: this request {what} the {self.router.config.slo_ms:g} ms "
                                          "target; retry later", self.router.retry_after_s()))

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            point = batch[0].point
            started = self.clock()
            try:
                kmax = max(r.k for r in batch)
                rerank = {"rerank": point.depth, "ranker_point": point.ranker} if point.ranker is not None else {}
                results = self.searcher.search_texts([r.text for r in batch], kmax, point.query, **rerank)
                if len(results) != len(batch):
                    raise StateError(f"searcher returned {len(results)} results for {len(batch)} queries")
            except BaseException as exc:  # fail this batch's requests, keep serving
                with self.metrics.lock:
                    self.metrics.errors += len(batch)
                for r in batch:
                    r.future.set_exception(exc)
                continue
            done = self.clock()
            with self._cond:
                self.router.observe_service(point.name, len(batch), (done - started) * 1000.0)
            deadline = self.router.config.slo_ms / 1000.0 if self.router.config.shed_late else float("inf")
            for r, hits in zip(batch, results):
                latency = done - r.arrival
                if latency > deadline:  # a batch ran past its prediction: refused, never answered late
                    self._refuse_late(r, f"took {latency * 1000.0:.0f} ms, past")
                    continue
                self.metrics.served(point.name, latency)
                r.future.set_result(
                    RoutedResult(list(hits)[: r.k], point.query, latency * 1000.0, (started - r.arrival) * 1000.0,
                                 len(batch), done, point)
                )

    # --- status ---------------------------------------------------------------------------
    def current_point(self) -> OperatingPoint:
        return self.router.current

    def metrics_text(self) -> str:
        return self.metrics.render(self.router.qps(), self.router.current_config.name, len(self._queue),
                                   self.config_names)

    def health(self) -> Dict[str, Any]:
        return {
            "status": "ok" if self._thread is not None and self._thread.is_alive() else "stopped",
            "points": self.point_names,
            "current_point": self.router.current.name,
            "current_config": self.router.current_config.name,
            "qps_estimate": round(self.router.qps(), 3),
            "queue_length": len(self._queue),
            "max_queue": self.router.max_queue,
            "calibration_scale": round(self.router.scale, 3),  # measured / profiled batch time (query-only)
            "calibration_scale_rerank": round(self.router.scales["rerank"], 3),  # ... of reranked configurations
            "slo_ms": self.router.config.slo_ms,
            # the query path this process runs, and the one the profile's latencies were measured on
            "encoder_backend": encoder_backend(self.searcher),
            "profiled_backend": self.router.profile.extra.get("encoder_backend"),
        }
