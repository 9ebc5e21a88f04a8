"""Discrete-event simulation and traces: deterministic, and the router beats static points."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from elasticdenser.serve import simulate as sim
from elasticdenser.serve.profile import PointProfile, Profile, mark_pareto
from elasticdenser.serve.router import Router, RouterConfig
from elasticdenser.serve.traces import from_file, nhpp, parse_trace, ramp_rate

FULL, P2, P3, SMALL = "L6-H12-F1536-D384", "L5-H10-F1280-D384", "L4-H8-F1024-D256", "L3-H6-F768-D192"


def fake_profile():
    def point(name, base, per, q):
        lat = {b: {"median": base + per * b, "p90": 1.15 * (base + per * b)} for b in (1, 2, 4, 8, 16, 32, 64)}
        return PointProfile(name, lat, {"recall@10": q})

    pts = [point(FULL, 8, 1.2, 0.80), point(P2, 7, 0.95, 0.79), point(P3, 6, 0.7, 0.76), point(SMALL, 5, 0.45, 0.70)]
    mark_pareto(pts, "recall@10")
    return Profile({p.name: p for p in pts}, "recall@10")


@pytest.fixture(scope="module")
def profile():
    return fake_profile()


@pytest.fixture(scope="module")
def cap(profile):
    return Router.static(profile, FULL).capacity[FULL]


def test_traces_are_seeded_poisson_processes(cap):
    a = parse_trace("poisson:rate=200,duration=50", seed=1).times
    b = parse_trace("poisson:rate=200,duration=50", seed=1).times
    c = parse_trace("poisson:rate=200,duration=50", seed=2).times
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(len(a) - 10_000) < 4 * 100  # Poisson count: mean 10000, sd 100
    assert np.all(np.diff(a) >= 0) and a[0] >= 0 and a[-1] < 50
    r = parse_trace("ramp:lo=0.2x,hi=3x,duration=100,hold=0.2", cap, seed=0).times
    first, middle = np.sum(r < 10), np.sum((r >= 45) & (r < 55))
    assert middle > 5 * first  # rate goes up to 3x and back
    assert ramp_rate(1, 3, 100)(np.array([0.0, 50.0, 100.0])).tolist() == [1.0, 3.0, 1.0]
    assert len(nhpp(lambda t: np.zeros_like(t), 10, 5.0)) == 0
    with pytest.raises(ValueError, match="reference capacity"):
        parse_trace("poisson:rate=2x,duration=5")
    with pytest.raises(ValueError, match="unknown trace kind"):
        parse_trace("sawtooth:rate=1")
    with pytest.raises(ValueError, match="unknown parameters"):
        parse_trace("poisson:rate=1,colour=red")


def test_trace_from_file(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("timestamp\n100.5\n100.0\n101.25\n")
    tr = from_file(str(f))
    assert tr.times.tolist() == [0.0, 0.5, 1.25]
    assert parse_trace(f"file:{f}").times.tolist() == [0.0, 0.5, 1.25]


def test_simulation_is_deterministic_for_a_seed(profile, cap):
    times = parse_trace("spike:base=0.5x,peak=2.5x,start=5,length=5,duration=20", cap, seed=4).times
    a = sim.simulate(times, profile, "router", seed=7)
    b = sim.simulate(times, profile, "router", seed=7)
    c = sim.simulate(times, profile, "router", seed=8)
    assert a.summary == b.summary and a.series == b.series and a.switches == b.switches
    assert a.summary["p99_ms"] != c.summary["p99_ms"]  # the seed drives the service-time noise


def test_router_vs_static_on_a_ramp(profile, cap):
    """The issue's benchmark shape on a synthetic profile: 0.2x -> 3x -> 0.2x of the full point."""
    tr = parse_trace("ramp:lo=0.2x,hi=3x,duration=60,hold=0.2", cap, seed=0)
    tail = parse_trace("poisson:rate=0.2x,duration=15", cap, seed=1).times + 60.0  # low load again
    tr.times, tr.duration = np.concatenate([tr.times, tail]), 75.0
    router, full, small = sim.simulate_policies(tr.times, profile, duration=tr.duration)
    assert router.summary["windows_p99_within_slo"] >= 0.99
    assert router.summary["rejection_rate"] < 0.01
    over = [r for r in full.series if r["offered_qps"] > 1.2 * cap]
    assert over and sum(not r["slo_ok"] for r in over) > 0.5 * len(over)  # static-full violates when overloaded
    low_r, low_f = sim.phase_summary(router, 0, 5, 50), sim.phase_summary(full, 0, 5, 50)
    assert low_r["mean_quality"] >= 0.98 * low_f["mean_quality"]  # full quality at low load
    assert router.summary["mean_quality"] > small.summary["mean_quality"]
    # every request either served or rejected: nothing lost
    for r in (router, full, small):
        assert r.summary["served"] + r.summary["rejected"] == len(tr.times)
    assert router.switches and router.switches[-1][2] == FULL  # back to full when the load drops


def test_overload_beyond_the_smallest_point_rejects_with_bounded_latency(profile):
    small_cap = Router(profile).capacity[SMALL]
    times = parse_trace(f"poisson:rate={3 * small_cap},duration=10", seed=0).times
    r = sim.simulate(times, profile, "router", RouterConfig(slo_ms=50))
    assert r.summary["rejection_rate"] > 0.3
    assert r.summary["p99_ms"] < 2 * 50  # accepted requests do not wait without bound
    unbounded = sim.simulate(times, profile, "static-smallest")  # no admission control
    assert unbounded.summary["p99_ms"] > 20 * 50 and unbounded.summary["rejected"] == 0


def test_policies_resolve(profile):
    assert sim.resolve_policy(profile, "static-full") == FULL
    assert sim.resolve_policy(profile, "static-smallest") == SMALL
    assert sim.resolve_policy(profile, f"static:{P3}") == P3
    assert sim.resolve_policy(profile, "router") is None
    with pytest.raises(ValueError):
        sim.resolve_policy(profile, "static:L1-H1-F8-D8")
    with pytest.raises(ValueError):
        sim.resolve_policy(profile, "fastest")


def test_csv_plot_and_cli(tmp_path, profile):
    from elasticdenser.cli import main

    prof_file = tmp_path / "profile.json"
    prof_file.write_text(json.dumps({"profile": profile.to_json()}))
    out_csv, out_png, out_json = tmp_path / "s.csv", tmp_path / "s.png", tmp_path / "s.json"
    rc = main(["simulate", "--profile", str(prof_file), "--trace", "ramp:lo=0.2x,hi=3x,duration=20",
               "--policies", f"router,static-full,static:{P3}", "--csv", str(out_csv), "--plot", str(out_png),
               "--json", str(out_json)])
    assert rc == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["policy"] for r in rows} == {"router", "static-full", f"static:{P3}"}
    assert len(rows) == 3 * 20 and set(sim.SERIES_FIELDS) == set(rows[0])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summ = json.loads(out_json.read_text())
    assert [r["policy"] for r in summ["results"]] == ["router", "static-full", f"static:{P3}"]
    assert main(["simulate", "--profile", str(prof_file), "--policies", "nonsense"]) == 2


def test_the_queueing_capacity_holds_the_tail_it_predicts():
    """Simulated Poisson load on a one-second-SLO point served one request at a time: p99 within the SLO at
    0.9x the queueing capacity (at 1.0x it is the SLO give or take the sample's noise), far past it at
    1.5x: the model is neither optimistic nor vacuous."""
    def linear(name, per, q):  # p90 = median: the simulated service times are the model's deterministic S
        return PointProfile(name, {b: {"median": per * b, "p90": per * b} for b in (1, 2, 4, 8, 16, 32)},
                            {"recall@10": q})

    prof = Profile({FULL: linear(FULL, 300, 0.7), SMALL: linear(SMALL, 80, 0.66)}, "recall@10")
    mark_pareto(prof.points.values(), "recall@10")
    cfg = RouterConfig(slo_ms=1000, max_batch=1)  # one at a time, as the model serves
    qcap = Router(prof, cfg).queueing_capacity[SMALL]
    p99 = [sim.simulate(parse_trace(f"poisson:rate={f * qcap},duration=600", seed=0).times, prof, f"static:{SMALL}", cfg,
                        seed=1).summary["p99_ms"] for f in (0.9, 1.5)]
    assert p99[0] <= 1000 and p99[1] > 2 * 1000
