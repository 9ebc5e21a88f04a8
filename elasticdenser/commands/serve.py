"""`elasticdenser serve`: the HTTP search server with the router (needs the `serve` extra)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from elasticdenser.commands._common import add_backend
from elasticdenser.errors import StateError
from elasticdenser.serve.router import RouterConfig
from elasticdenser.serve.server import ServerLimits


def add_router_args(p: argparse.ArgumentParser) -> None:
    """Router / batching / queue flags shared by `serve` and `simulate`; defaults are RouterConfig's."""
    d = RouterConfig()
    g = p.add_argument_group("router")
    g.add_argument("--slo-ms", type=float, default=d.slo_ms, help=f"latency target in ms (default {d.slo_ms:g})")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help=f"largest batch encoded at once (default {d.max_batch})")
    g.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"longest wait for a batch to fill, ms (default {d.max_wait_ms:g})")
    g.add_argument("--margin", type=float, default=d.margin,
                   help=f"use at most this share of a point's SLO capacity (default {d.margin:g})")
    g.add_argument("--step-up-margin", type=float, default=d.step_up_margin,
                   help=f"stricter share required before stepping up (default {d.step_up_margin:g})")
    g.add_argument("--step-up-after", type=float, default=d.step_up_after_s,
                   help=f"seconds a better point must stay feasible (default {d.step_up_after_s:g})")
    g.add_argument("--rate-tau", type=float, default=d.rate_tau_s,
                   help=f"EWMA time constant of the QPS estimate, s (default {d.rate_tau_s:g})")
    g.add_argument("--slow-rate-tau", type=float, default=d.slow_rate_tau_s,
                   help=f"time constant of the step-up QPS estimate, s (default {d.slow_rate_tau_s:g})")
    g.add_argument("--rate-noise-z", type=float, default=d.rate_noise_z,
                   help="standard deviations of the QPS estimate's noise a point's queueing capacity tolerates "
                        f"before stepping down (default {d.rate_noise_z:g})")
    g.add_argument("--max-queue", type=int, help="bounded queue (default: what the cheapest point drains in the SLO)")


def router_config(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        slo_ms=args.slo_ms, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, margin=args.margin,
        step_up_margin=args.step_up_margin, step_up_after_s=args.step_up_after, rate_tau_s=args.rate_tau,
        slow_rate_tau_s=args.slow_rate_tau, rate_noise_z=args.rate_noise_z,
        max_queue=args.max_queue,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP server: POST /search, GET /health, GET /metrics (router picks the point per batch)",
        description="Serve an experiment over HTTP. Needs a profile in the manifest (run `elasticdenser profile`).",
    )
    p.add_argument("exp_dir", help="experiment directory with a profiled manifest")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (use what `profile --threads` used)")
    add_backend(p, None, "query encoder path (default: the one the profile was measured on, else auto)")
    d = ServerLimits()
    g = p.add_argument_group("limits and access")
    g.add_argument("--api-key", default=os.environ.get("ELASTICDENSER_API_KEY"),
                   help="require this value in the X-API-Key header for /search and /metrics "
                   "(default: $ELASTICDENSER_API_KEY; none = open)")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"larger request bodies get 413 before parsing (default {d.max_body_bytes})")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help=f"close a connection with no request in flight after this many seconds (default {d.idle_timeout_s:g})")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                   help="close a connection whose request is not complete after this many seconds "
                   f"(default {d.request_timeout_s:g})")
    g.add_argument("--docs", action="store_true", help="serve the interactive /docs and /openapi.json (off by default)")
    p.add_argument("--ranker", help="the ElasticRanker the profile measured (`profile --ranker`): the router then "
                   "chooses the query point, the ranker point and the rerank depth (none included) together")
    g.add_argument("--serve-late", action="store_true",
                   help="serve queued requests even when they can no longer meet the SLO (default: answer them "
                   "503 + Retry-After at once)")
    add_router_args(p)
    p.set_defaults(func=run)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise StateError("`elasticdenser serve` needs the serve extra: pip install 'elasticdenser[serve]'") from None
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.profile import check_profile_model, load_profile
    from elasticdenser.serve.server import serve

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    profile = load_profile(args.exp_dir)
    backend = args.backend or profile.extra.get("encoder_backend") or "auto"
    searcher = Searcher.open(args.exp_dir, backend=backend, ranker=args.ranker)
    check_profile_model(profile, searcher.encoder.fingerprint(), f"the profile in {args.exp_dir}")
    measured = profile.extra.get("ranker_fingerprint")
    if args.ranker and measured != searcher.ranker.fingerprint():
        raise StateError(f"the profile in {args.exp_dir} did not measure the ranker {args.ranker}"
                         f"{'' if measured else ' (it has no ranker entries)'}: run `elasticdenser profile "
                         f"{args.exp_dir} --ranker {args.ranker}`")
    for width in sorted({p.width for p in searcher.points}):
        searcher.index(width)  # a missing or damaged index is an error now, not at the first request
    limits = ServerLimits(max_body_bytes=args.max_body_bytes, idle_timeout_s=args.idle_timeout,
                          request_timeout_s=args.request_timeout, api_key=args.api_key or None, docs=args.docs)
    config = dataclasses.replace(router_config(args), shed_late=not args.serve_late)
    serve(searcher, host=args.host, port=args.port, profile=profile, config=config,
          log_level=args.log_level, limits=limits)
    return 0
