"""`elasticdenser simulate`: replay a request trace against the router and static policies."""
from __future__ import annotations

import argparse
import re

from elasticdenser.commands._common import add_data_dir
from elasticdenser.commands.serve import add_router_args, router_config
from elasticdenser.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="load simulation: router vs static points on a trace (discrete-event or real run)",
        description=(
            "Replays a trace against the router and static policies. --mode des: discrete-event simulation "
            "driven by the measured profile (deterministic with --seed). --mode inprocess: real concurrent "
            "requests to an in-process Searcher (needs --exp-dir). --mode http: real requests to a running "
            "`elasticdenser serve` (--url). Rates may be relative to the full point's SLO capacity: '1.5x'."
        ),
    )
    p.add_argument("--profile", required=True, help="experiment dir, manifest.json or profile JSON")
    p.add_argument("--trace", default="ramp:lo=0.2x,hi=3x,duration=120,hold=0.2,base=0.15",
                   help="poisson:rate=R,duration=S | ramp:lo=,hi=,duration=,hold= | spike:base=,peak=,start=,length=,"
                        "duration= | day:lo=,hi=,duration= | file:PATH (default: ramp 0.2x->3x->0.2x, 120 s)")
    p.add_argument("--capacity", type=float,
                   help="what '1x' means in qps (default: the full point's SLO capacity from the profile)")
    p.add_argument("--policies", default="router,static-full,static-smallest",
                   help="comma-separated: router, static-full, static-smallest, static:POINT")
    p.add_argument("--mode", choices=["des", "inprocess", "http"], default="des")
    p.add_argument("--exp-dir", help="experiment to search (inprocess mode; default: --profile if it is a dir)")
    p.add_argument("--ranker", help="the trained ranker the profile's joint configurations rerank with (inprocess mode)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (http mode)")
    p.add_argument("--collection", help="query texts for real runs (default: the experiment's collection)")
    add_data_dir(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=float, default=1.0, help="time-series window in seconds (default 1)")
    p.add_argument("--static-max-queue", type=int, default=None,
                   help="queue bound of static policies (default: unbounded in practice, 100000)")
    p.add_argument("--csv", help="write the per-window time series here")
    p.add_argument("--plot", help="write a PNG (QPS, chosen point, p99, quality over time; needs the plots extra)")
    p.add_argument("--json", help="write the per-policy summaries here")
    add_router_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elasticdenser.atomic import write_json
    from elasticdenser.serve import replay
    from elasticdenser.serve import simulate as sim
    from elasticdenser.serve.profile import load_profile
    from elasticdenser.serve.router import Router
    from elasticdenser.serve.traces import parse_trace

    profile = load_profile(args.profile)
    config = router_config(args)
    full = sim.full_point(profile)
    capacity = args.capacity or Router.static(profile, full, config).capacity[full]
    if capacity <= 0 and re.search(r"\dx\b", args.trace):
        raise InvalidInputError(f"{full} cannot meet a {config.slo_ms:g} ms SLO at any load on the profiled machine, so "
                         "relative rates ('2x') are undefined: raise --slo-ms or pass --capacity")
    if args.ranker and args.mode != "inprocess":
        raise InvalidInputError("--ranker is for --mode inprocess (a server gets its ranker from `serve --ranker`)")
    trace = parse_trace(args.trace, capacity, args.seed)
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    for pol in policies:
        sim.resolve_policy(profile, pol)  # fail fast on a bad policy name
    static_q = args.static_max_queue if args.static_max_queue is not None else sim.STATIC_MAX_QUEUE
    print(f"trace {trace.name}: {len(trace)} requests over {trace.duration:g} s; full point {full} "
          f"SLO capacity {capacity:.1f} qps (1x)")

    results = []
    if args.mode == "des":
        results = sim.simulate_policies(trace.times, profile, policies, config, args.seed, args.window,
                                        trace.duration, static_q)
    else:
        texts = _query_texts(args, profile)
        if args.mode == "inprocess":
            from elasticdenser.searcher import Searcher

            exp_dir = _exp_dir(args)
            if not exp_dir:
                raise InvalidInputError("--mode inprocess needs --exp-dir")
            searcher = Searcher.open(exp_dir, ranker=args.ranker)
            for pol in policies:
                results.append(replay.run_real_inprocess(trace.times, searcher, profile, pol, texts, config, args.k,
                                                      window_s=args.window, duration=trace.duration,
                                                      static_max_queue=static_q))
        else:
            for pol in policies:
                results.append(replay.run_real_http(trace.times, args.url, profile, pol, texts, config.slo_ms, args.k,
                                                 window_s=args.window, duration=trace.duration))
    print(sim.format_summary(results, config.slo_ms))
    if args.csv:
        print(f"time series: {sim.write_csv(results, args.csv)}")
    if args.json:
        write_json(args.json, {"trace": trace.name, "capacity_1x_qps": capacity,
                               "results": [r.summary for r in results]})
    if args.plot:
        out = sim.plot(results, args.plot, profile, config.slo_ms, title=f"{args.mode}: {trace.name}")
        print(f"plot: {out}" if out else "plot skipped: matplotlib not installed (pip install 'elasticdenser[plots]')")
    return 0


def _exp_dir(args: argparse.Namespace):
    """The experiment a real run searches: ``--exp-dir``, else ``--profile`` when it is a folder."""
    from pathlib import Path

    return args.exp_dir or (args.profile if Path(args.profile).is_dir() else None)


def _query_texts(args: argparse.Namespace, profile) -> list:
    from elasticdenser.data import load_collection

    name = args.collection
    exp_dir = _exp_dir(args)
    if not name and exp_dir:
        from elasticdenser.index import manifest as mf

        name = mf.load(exp_dir).get("collection", {}).get("name")
    if not name:
        raise InvalidInputError("real runs need query texts: pass --collection")
    texts = [q.text for q in load_collection(name, args.data_dir).queries if q.text.strip()]
    if not texts:
        raise InvalidInputError(f"collection {name} has no queries")
    return texts
