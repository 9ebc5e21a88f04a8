"""The router's limit rules side by side on one measured profile's discrete-event ramp (issue 17).

The trace and seed are `elasticdenser simulate`'s (ramp 0.2x -> 3x -> 0.2x of the full configuration's
SLO capacity, 300 s, seed 0). Variants: 0.13.0's rule (``margin`` x SLO capacity only) at margin 0.6 and
0.8, and 0.14.0's rule (the larger of that and the M/D/1 queueing capacity) with ``rate_noise_z`` 0, 1
and 2 (the default). The default's own figure is the one `simulate` prints; this script adds the rest::

    HF_HUB_OFFLINE=1 python benchmarks/router_variants.py runs/rank/scifact/exp --slo-ms 1000 \\
        --out benchmarks/results/ranker-router-variants-s23.json
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from elasticdenser.serve import simulate as sim
from elasticdenser.serve.profile import load_profile
from elasticdenser.serve.router import Router, RouterConfig
from elasticdenser.serve.traces import parse_trace

TRACE = "ramp:lo=0.2x,hi=3x,duration=300,hold=0.2,base=0.15"


@contextmanager
def margin_only():
    """0.13.0's limit: ``margin`` x SLO capacity, no queueing capacity."""
    kept = Router.limit_qps
    Router.limit_qps = lambda self, p, margin=None, noisy=False: (
        (self.config.margin if margin is None else margin) * self.capacity[p.name])
    try:
        yield
    finally:
        Router.limit_qps = kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="experiment dir or profile JSON")
    ap.add_argument("--slo-ms", type=float, required=True)
    ap.add_argument("--out", help="write the summaries here (JSON)")
    args = ap.parse_args(argv)
    profile = load_profile(args.profile)
    full = sim.full_point(profile)
    variants = {
        "0.13.0 rule, margin 0.6": (margin_only, {}),
        "0.13.0 rule, margin 0.8": (margin_only, {"margin": 0.8}),
        "0.14.0 rule, rate_noise_z 0": (nullcontext, {"rate_noise_z": 0.0}),
        "0.14.0 rule, rate_noise_z 1": (nullcontext, {"rate_noise_z": 1.0}),
        "0.14.0 rule, rate_noise_z 2 (default)": (nullcontext, {}),
    }
    out = {}
    for name, (rule, settings) in variants.items():
        config = RouterConfig(slo_ms=args.slo_ms, **settings)
        capacity = Router.static(profile, full, config).capacity[full]
        trace = parse_trace(TRACE, capacity, 0)
        with rule():
            summary = sim.simulate(trace.times, profile, "router", config, seed=0, duration=trace.duration).summary
        out[name] = {k: summary[k] for k in ("windows_p99_within_slo", "mean_quality", "p99_ms", "switches")}
        print(f"{name:40s} {json.dumps(out[name])}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
