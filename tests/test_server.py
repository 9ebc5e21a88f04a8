"""The HTTP server over real HTTP on 127.0.0.1 (uvicorn in a thread), and the routed service."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace as NS

import httpx
import pytest

from elasticdenser.serve.profile import PointProfile, Profile, mark_pareto
from elasticdenser.serve.router import Overloaded, RouterConfig
from elasticdenser.serve.service import RoutedSearcher

FULL, SMALL = "L6-H12-F1536-D384", "L3-H6-F768-D192"


def fake_profile():
    def point(name, base, per, q):
        lat = {b: {"median": base + per * b, "p90": 1.15 * (base + per * b)} for b in (1, 2, 4, 8, 16, 32, 64)}
        return PointProfile(name, lat, {"recall@10": q})

    pts = [point(FULL, 8, 1.2, 0.80), point(SMALL, 5, 0.45, 0.70)]
    mark_pareto(pts, "recall@10")
    return Profile({p.name: p for p in pts}, "recall@10")


class FakeSearcher:
    """Implements the Searcher interface the service needs; can hold every batch on a gate."""

    points = [FULL, SMALL]

    def __init__(self, gated=False):
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.batches = []  # (point, texts)
        self.lock = threading.Lock()

    def search_texts(self, texts, k, point):
        with self.lock:
            self.batches.append((str(point), list(texts)))
        assert self.gate.wait(20), "test gate never opened"
        return [[NS(doc_id=f"{t}-{i}", score=1.0 / (i + 1), title="T", text=f"passage {i}") for i in range(k)]
                for t in texts]


def wait_for(cond, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def running_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


# --- the routed service ----------------------------------------------------------------------
def test_requests_arriving_together_share_one_batch_and_say_their_point():
    fake = FakeSearcher(gated=True)
    with RoutedSearcher(fake, profile=fake_profile(), config=RouterConfig(max_wait_ms=1.0)) as svc:
        first = svc.submit("q0", 3)
        wait_for(lambda: len(fake.batches) == 1, "the first batch")
        rest = [svc.submit(f"q{i}", 2) for i in range(1, 6)]
        pinned = svc.submit("pinned", 1, point=SMALL)
        fake.gate.set()
        results = [f.result(20) for f in [first] + rest]
        pinned_res = pinned.result(20)
    assert [len(texts) for _, texts in fake.batches] == [1, 5, 1]
    assert [r.batch_size for r in results] == [1, 5, 5, 5, 5, 5]
    assert all(r.point.name == FULL for r in results)  # low load: the router keeps the full point
    assert pinned_res.point.name == SMALL and fake.batches[2] == (SMALL, ["pinned"])
    assert len(results[0].hits) == 3 and len(results[1].hits) == 2  # each request gets its own k


def test_bounded_queue_rejects_and_close_loses_nothing():
    fake = FakeSearcher(gated=True)
    svc = RoutedSearcher(fake, profile=fake_profile(), config=RouterConfig(max_batch=2, max_queue=3)).start()
    futs = [svc.submit("a")]
    wait_for(lambda: len(fake.batches) == 1, "the first batch")
    futs += [svc.submit(q) for q in "bcd"]  # queue: 3 waiting = full
    with pytest.raises(Overloaded) as exc:
        svc.submit("e")
    assert exc.value.retry_after_s >= 1 and "overloaded" in str(exc.value)
    fake.gate.set()
    svc.close()
    assert all(f.done() and f.result().hits for f in futs)  # every accepted request served
    assert sorted(t for _, texts in fake.batches for t in texts) == ["a", "b", "c", "d"]
    assert svc.metrics.rejections == 1 and sum(svc.metrics.requests.values()) == 4
    with pytest.raises(RuntimeError, match="not running"):
        svc.submit("late")


def test_service_input_checks_and_missing_profile():
    svc = RoutedSearcher(FakeSearcher(), profile=fake_profile())
    with pytest.raises(ValueError, match="not served"):
        svc.validate_point("L1-H1-F8-D8")
    with pytest.raises(ValueError, match="cannot parse"):
        svc.validate_point("big")
    with pytest.raises(ValueError, match="elasticdenser profile"):
        RoutedSearcher(FakeSearcher())


# --- HTTP ------------------------------------------------------------------------------------
def test_server_answers_rejects_bad_input_and_reports_metrics():
    from elasticdenser.serve.server import create_app

    app = create_app(FakeSearcher(), profile=fake_profile())
    with running_server(app) as url, httpx.Client(base_url=url, timeout=20) as c:
        r = c.post("/search", json={"query": "who wrote hamlet", "k": 4})
        assert r.status_code == 200
        body = r.json()
        assert body["point"] == FULL and len(body["hits"]) == 4
        assert set(body["hits"][0]) == {"doc_id", "score", "title", "text"}
        r = c.post("/search", json={"query": "who wrote hamlet", "point": SMALL})
        assert r.status_code == 200 and r.json()["point"] == SMALL and len(r.json()["hits"]) == 10
        for bad, needle in [({"query": ""}, "query"), ({"query": "   "}, "non-whitespace"), ({"k": 3}, "query"),
                            ({"query": "x", "k": 0}, "k"), ({"query": "x", "k": "many"}, "k"),
                            ({"query": "x", "point": "huge"}, "cannot parse"),
                            ({"query": "x", "point": "L1-H1-F8-D8"}, "not served")]:
            r = c.post("/search", json=bad)
            assert r.status_code == 422, bad
            assert r.json()["error"] == "invalid request" and needle in " ".join(r.json()["detail"]), r.json()
        r = c.post("/search", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["points"] == [FULL, SMALL] and h["current_point"] == FULL
        m = c.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        text = m.text
        assert f'elasticdenser_requests_total{{point="{FULL}"}} 1' in text
        assert f'elasticdenser_requests_total{{point="{SMALL}"}} 1' in text
        assert "elasticdenser_rejections_total 0" in text
        assert 'elasticdenser_request_latency_seconds_bucket{le="+Inf"} 2' in text
        assert "elasticdenser_qps_estimate " in text
        assert f'elasticdenser_chosen_point{{point="{FULL}"}} 1' in text


def test_server_overload_is_503_with_retry_after_and_accepted_requests_complete():
    from elasticdenser.serve.server import create_app

    fake = FakeSearcher(gated=True)
    svc = RoutedSearcher(fake, profile=fake_profile(), config=RouterConfig(max_batch=1, max_queue=2))
    app = create_app(svc, warm_up=False)  # the gated searcher would block a warm-up
    with running_server(app) as url:
        results = {}

        def send(name):
            with httpx.Client(base_url=url, timeout=30) as c:
                results[name] = c.post("/search", json={"query": name, "k": 1})

        threads = [threading.Thread(target=send, args=("a",))]
        threads[0].start()
        wait_for(lambda: len(fake.batches) == 1, "the first request to reach the searcher")
        for name in "bc":
            threads.append(threading.Thread(target=send, args=(name,)))
            threads[-1].start()
        wait_for(lambda: svc.queue_len == 2, "two queued requests")
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/search", json={"query": "d", "k": 1})
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"] == "overloaded"
            fake.gate.set()
            for t in threads:
                t.join(30)
            assert {n: r.status_code for n, r in results.items()} == {"a": 200, "b": 200, "c": 200}
            text = c.get("/metrics").text
        assert "elasticdenser_rejections_total 1" in text
        assert 'elasticdenser_request_latency_seconds_count 3' in text
