"""End to end on a tiny real experiment: `elasticdenser profile`, the server, and both real-run modes."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from elasticdenser.cli import main
from elasticdenser.index import build
from elasticdenser.serve import replay
from elasticdenser.serve import simulate as sim
from elasticdenser.serve.profile import load_profile
from elasticdenser.serve.router import RouterConfig


@contextlib.contextmanager
def running_server(app):
    """uvicorn on 127.0.0.1 (a free port) in a thread; stopped on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while this module runs (restored after): on a busy 2-core machine torch's
    spinning thread pool turns every op of the tiny model into a scheduler time slice."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exp(tmp_path_factory, tiny_encoder, data_dir, small_nq):
    corpus = small_nq(n_docs=60).corpus
    out = tmp_path_factory.mktemp("exp")
    build.build_experiment(tiny_encoder, corpus, out, collection="nq-sample", chunk_size=64, progress=False)
    rc = main(["profile", str(out), "--data-dir", str(data_dir), "--max-queries", "6", "--batch-sizes", "1,2,4",
               "--repeats", "1", "--metric", "accuracy@10", "--threads", "1"])
    assert rc == 0
    return out


def test_profile_is_stored_in_the_manifest(exp, tiny_encoder):
    m = json.loads((exp / "manifest.json").read_text())
    assert "indexes" in m and "model" in m  # the rest of the manifest is kept
    prof = load_profile(exp)
    assert prof.metric == "accuracy@10" and prof.batch_sizes == [1, 2, 4]
    assert set(prof.points) == {p.name for p in tiny_encoder.default_points()}
    for p in prof.points.values():
        assert set(p.latency_ms) == {1, 2, 4}
        assert all(0 < v["median"] <= v["p90"] for v in p.latency_ms.values())
        assert 0.0 <= p.quality["accuracy@10"] <= 1.0 and "recall@10" in p.quality
        assert p.flops and p.flops > 0
    # the stored Pareto flags are the definition applied to the stored numbers
    pts, metric = list(prof.points.values()), prof.metric
    for p in pts:
        dominated = any(q is not p and q.cost() <= p.cost() and q.quality[metric] >= p.quality[metric]
                        and (q.cost() < p.cost() or q.quality[metric] > p.quality[metric]) for q in pts)
        assert p.pareto == (not dominated)
        assert p.params == tiny_encoder.point_params(p.point)
    assert prof.machine["cpu_count"] >= 1
    from elasticdenser.model import fastpath

    assert prof.extra["encoder_backend"] == fastpath.resolve_backend("auto")  # `serve` runs what was measured
    assert prof.extra["small_batch_threads"] == {name: 1 for name in prof.points}  # one torch thread: one


def test_a_routed_searcher_runs_small_batches_on_the_threads_its_profile_measured(exp, monkeypatch):
    """The server pins each point's small-batch threads to the profile's (measured with as many torch
    threads as it runs), so the profile's batch-1 times describe it; otherwise it measures its own."""
    import dataclasses

    import torch

    from elasticdenser.model import fastpath
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.service import RoutedSearcher

    monkeypatch.setattr(fastpath, "faster_threads", lambda *a: pytest.fail("measured instead of pinned"))
    prof = load_profile(exp)
    torch.set_num_threads(2)
    try:
        for torch_threads, pinned in ((2, True), (4, False)):
            searcher = Searcher.open(exp)
            profile = dataclasses.replace(prof, machine={**prof.machine, "torch_threads": torch_threads},
                                          extra={**prof.extra, "small_batch_threads": {n: 2 for n in prof.points}})
            RoutedSearcher(searcher, profile)
            runners = [fastpath.get_runner(searcher.encoder, p, "auto") for p in searcher.points]
            assert [r._small_threads for r in runners] == [{2: 2} if pinned else {}] * len(runners)
            if pinned:
                assert all(r.threads_for(1) == 2 for r in runners)
    finally:
        torch.set_num_threads(1)


def test_the_opt_in_int8_path_is_profiled_and_served(exp, data_dir, tmp_path, monkeypatch):
    import shutil

    from elasticdenser.model import fastpath
    from elasticdenser.searcher import Searcher

    if "int8" not in fastpath.available_backends():
        pytest.skip("onnxruntime not installed")
    copy = shutil.copytree(exp, tmp_path / "exp")
    assert main(["profile", str(copy), "--data-dir", str(data_dir), "--max-queries", "4", "--batch-sizes", "1,2",
                 "--repeats", "1", "--metric", "accuracy@10", "--threads", "1", "--backend", "int8"]) == 0
    assert load_profile(copy).extra["encoder_backend"] == "int8"
    served = {}
    monkeypatch.setattr("elasticdenser.serve.server.serve",
                        lambda searcher, **kw: served.update(backend=searcher.backend))
    # `serve` without --backend runs the profiled path; --backend overrides it
    assert main(["serve", str(copy)]) == 0 and served["backend"] == "int8"
    assert main(["serve", str(copy), "--backend", "onnx"]) == 0 and served["backend"] == "onnx"
    exact, int8 = Searcher.open(exp), Searcher.open(exp, backend="int8")
    assert (exact.backend, int8.backend) == ("auto", "int8")
    texts = ["who wrote the declaration of independence", "when did the titanic sink"]
    p = exact.points[0]
    a, b = exact.search_texts(texts, 5, p), int8.search_texts(texts, 5, p)
    assert [len(h) for h in b] == [5, 5]
    assert [h.doc_id for h in a[0][:1]] == [h.doc_id for h in b[0][:1]]


def test_real_searcher_behind_http_and_both_real_run_modes(exp, data_dir):
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.server import create_app

    searcher = Searcher.open(exp)
    prof = load_profile(exp)
    texts = ["who wrote the declaration of independence", "when did the titanic sink", "largest planet"]
    cfg = RouterConfig(slo_ms=1000)  # a loose SLO: this checks wiring, not speed
    times = np.arange(12) * 0.05  # 12 requests over 0.6 s
    res = replay.run_real_inprocess(times, searcher, prof, "router", texts, cfg, k=3)
    assert res.summary["served"] == 12 and res.summary["rejected"] == 0
    assert all(r["point"] in prof.points for r in res.series if r["point"])
    app = create_app(searcher, profile=prof, config=cfg)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            h = c.get("/health").json()  # the served path is the profiled one
            assert h["encoder_backend"] == h["profiled_backend"] == prof.extra["encoder_backend"]
            r = c.post("/search", json={"query": texts[0], "k": 3})
            assert r.status_code == 200
            body = r.json()
            assert body["point"] in [str(p) for p in searcher.points] and len(body["hits"]) == 3
            assert body["hits"][0]["doc_id"] in set(searcher.doc_ids)
        small = sim.smallest_point(prof)
        res = replay.run_real_http(times, url, prof, f"static:{small}", texts, slo_ms=1000, k=3)
        assert res.summary["served"] == 12
        assert {r["point"] for r in res.series if r["point"]} == {small}


def test_profile_quality_ranks_by_position_so_a_point_with_equal_recall_is_not_a_tie():
    """Recall@10 saturates on easy collections: a cheaper point that finds the same documents lower
    down tied the full point and marked it dominated, so the router never served the full model.
    The default metric is nDCG@k (ranx), which sees the difference."""
    from types import SimpleNamespace as NS

    from elasticdenser.serve.measure import quality_of_hits
    from elasticdenser.serve.profile import PointProfile, mark_pareto

    queries = [NS(query_id=f"q{i}", answers=None) for i in range(3)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(3)}
    top = [[NS(doc_id=f"d{i}", score=1.0, text=""), NS(doc_id="x", score=0.5, text="")] for i in range(3)]
    lower = [[NS(doc_id="x", score=1.0, text=""), NS(doc_id=f"d{i}", score=0.9, text="")] for i in range(3)]
    full, small = quality_of_hits(top, queries, qrels, 10), quality_of_hits(lower, queries, qrels, 10)
    assert full["recall@10"] == small["recall@10"] == 1.0
    assert full["ndcg@10"] == full["mrr@10"] == 1.0 and small["mrr@10"] == 0.5 and small["ndcg@10"] < 0.7
    # a query with no hits at all scores 0, not skipped
    assert quality_of_hits([[], *top[1:]], queries, qrels, 10)["mrr@10"] == pytest.approx(2 / 3)
    lat = {1: {"median": 1.0, "p90": 1.0}}
    pts = [PointProfile("L6-H12-F1536-D384", {1: {"median": 2.0, "p90": 2.0}}, full),
           PointProfile("L3-H6-F768-D192", lat, small)]
    mark_pareto(pts, "ndcg@10")
    assert all(p.pareto for p in pts)
    mark_pareto(pts, "recall@10")
    assert not pts[0].pareto  # what the old default did
