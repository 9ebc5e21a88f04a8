"""Real runs of a load trace: a bounded load generator on this machine sends the trace's requests
at their timestamps to an in-process :class:`~elasticdenser.serve.service.RoutedSearcher` or to the
HTTP server, and measures what comes back -- the same report as the discrete-event
:func:`elasticdenser.serve.simulate.simulate`, so simulated and measured runs compare line by line.
"""
from __future__ import annotations

import threading
import time
from typing import Any, List, Optional, Sequence

import numpy as np

from elasticdenser.serve.profile import Profile
from elasticdenser.serve.router import Overloaded, RouterConfig
from elasticdenser.serve.simulate import STATIC_MAX_QUEUE, PolicyResult, make_router, resolve_policy, summarize

__all__ = ["run_real_inprocess", "run_real_http"]


def run_real_inprocess(
    times: np.ndarray,
    searcher: Any,
    profile: Profile,
    policy: str,
    texts: Sequence[str],
    config: Optional[RouterConfig] = None,
    k: int = 10,
    max_in_flight: int = 1024,
    window_s: float = 1.0,
    duration: Optional[float] = None,
    static_max_queue: Optional[int] = STATIC_MAX_QUEUE,
) -> PolicyResult:
    """Send the trace to an in-process :class:`RoutedSearcher` from a bounded load generator.

    Latency is measured from the moment a request is submitted to the moment its result is set.
    A request the generator cannot send because ``max_in_flight`` are outstanding counts as
    rejected (it never happens unless the service loses requests).
    """
    from elasticdenser.serve.service import RoutedSearcher, servable_configs

    config = config or RouterConfig()
    router = make_router(profile, policy, config, clock=time.monotonic, points=servable_configs(searcher, profile),
                         static_max_queue=static_max_queue)
    n = len(times)
    latency = np.full(n, np.nan)
    served_by: List[Optional[str]] = [None] * n
    in_flight = threading.BoundedSemaphore(max_in_flight)
    done_all = threading.Event()
    remaining = [n]
    lock = threading.Lock()

    def finish(j: int, t_sent: float, fut) -> None:
        try:
            res = fut.result()
            latency[j] = (res.done_at - t_sent) * 1000.0
            served_by[j] = (res.config or res.point).name
        except Overloaded:
            pass
        finally:
            in_flight.release()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done_all.set()

    service = RoutedSearcher(searcher, router=router)
    service.warm_up()  # not timed: indexes and caches loaded before the trace starts
    with service:
        t0 = time.monotonic()
        for j, t in enumerate(np.asarray(times, dtype=float).tolist()):
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not in_flight.acquire(blocking=False):
                with lock:
                    remaining[0] -= 1
                continue
            t_sent = time.monotonic()
            try:
                fut = service.submit(texts[j % len(texts)], k)
            except Overloaded:
                in_flight.release()
                with lock:
                    remaining[0] -= 1
                continue
            fut.add_done_callback(lambda f, j=j, t_sent=t_sent: finish(j, t_sent, f))
        with lock:
            if remaining[0] == 0:
                done_all.set()
        done_all.wait(timeout=120)
        switches = list(router.switches)
        t_start = t0
    rel_switches = [(t - t_start, a, b) for t, a, b in switches]
    span = duration if duration is not None else (float(times[-1]) if n else 0.0)
    res = summarize(policy, times, latency, served_by, profile, config.slo_ms, span, window_s, rel_switches)
    res.summary.update(router.run_summary())
    return res


def run_real_http(
    times: np.ndarray,
    url: str,
    profile: Profile,
    policy: str,
    texts: Sequence[str],
    slo_ms: float = 50.0,
    k: int = 10,
    max_in_flight: int = 256,
    window_s: float = 1.0,
    timeout_s: float = 30.0,
    duration: Optional[float] = None,
) -> PolicyResult:
    """Send the trace to ``url`` (the ``elasticdenser serve`` server) with a bounded asyncio client.

    The router policy sends no point; a static policy sends its point with every request.
    503 answers count as rejections.
    """
    import asyncio

    import httpx

    fixed = resolve_policy(profile, policy)
    n = len(times)
    latency = np.full(n, np.nan)
    served_by: List[Optional[str]] = [None] * n

    async def main() -> None:
        sem = asyncio.Semaphore(max_in_flight)
        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def one(j: int) -> None:
                body = {"query": texts[j % len(texts)], "k": k}
                if fixed:
                    body["point"] = fixed
                try:
                    t_sent = loop.time()
                    r = await client.post("/search", json=body)
                    if r.status_code == 200:
                        latency[j] = (loop.time() - t_sent) * 1000.0
                        served_by[j] = r.json()["point"]
                except httpx.HTTPError:
                    pass
                finally:
                    sem.release()

            tasks = []
            for j, t in enumerate(np.asarray(times, dtype=float).tolist()):
                delay = t0 + t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sem.locked():
                    continue  # generator bound reached: count as rejected
                await sem.acquire()
                tasks.append(asyncio.create_task(one(j)))
            await asyncio.gather(*tasks)

    asyncio.run(main())
    span = duration if duration is not None else (float(times[-1]) if n else 0.0)
    return summarize(policy, times, latency, served_by, profile, slo_ms, span, window_s)
