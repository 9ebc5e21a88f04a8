"""Router benchmark: profile a real nq-sample experiment, then replay a 0.2x -> 3x -> 0.2x ramp.

Stages (each reuses what the previous ones left in ``--exp-dir`` / ``--out``):

1. ``build``: if ``EXP_DIR/manifest.json`` is missing, an nq-sample experiment from
   all-MiniLM-L6-v2 (heads/FFN reordered by importance on nq-sample *training* questions; the
   full model, hence the document embeddings, is unchanged by the reordering). Pass an existing
   experiment (e.g. one with an elastically trained encoder) to skip this.
2. ``profile``: ``elasticdenser profile`` on this machine (skipped if the manifest has one, unless
   ``--reprofile``).
3. ``des``: the discrete-event simulation, router vs static-full vs static-smallest, on the ramp.
4. ``real``: the same trace shape (shorter) sent to an in-process ``RoutedSearcher`` and, with
   ``--http``, to the HTTP server on 127.0.0.1.

Torch runs with ``--threads`` intra-op threads (default 1) for profiling and real runs alike:
the profile must describe the process that serves.

    python benchmarks/bench_router.py --exp-dir /tmp/ed-bench/nq-minilm --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(exp_dir: Path, data_dir: str, reorder_queries: int) -> None:
    from elasticdenser.data import load_collection
    from elasticdenser.index import build as b
    from elasticdenser.model.encoder import ElasticEncoder

    coll = load_collection("nq-sample", data_dir)
    enc = ElasticEncoder.from_pretrained()
    if reorder_queries:
        pos = coll.train_positives or {}
        pairs = []
        for q in coll.train_queries or []:
            for d in pos.get(q.query_id) or []:
                doc = coll.corpus.get(d)
                if doc is not None and len(pairs) < reorder_queries:
                    pairs.append((q.text, doc.contents))
        if pairs:
            log(f"reordering heads/neurons by importance on {len(pairs)} training pairs")
            enc.reorder_by_importance([p[0] for p in pairs], [p[1] for p in pairs], batch_size=16)
    log(f"building {exp_dir} ({len(coll.corpus)} passages)")
    b.build_experiment(enc, coll.corpus, exp_dir, collection="nq-sample", batch_size=64, progress=False)


def profile(exp_dir: Path, data_dir: str, max_queries: int, repeats: int, threads: int, backend: str) -> None:
    from elasticdenser.cli import main

    rc = main(["profile", str(exp_dir), "--data-dir", data_dir, "--max-queries", str(max_queries),
               "--repeats", str(repeats), "--threads", str(threads), "--seed", "1", "--backend", backend])
    if rc:
        raise SystemExit(rc)


def criteria(results, cap: float, slo: float, trace) -> dict:
    """The issue's checks on the ramp: windows within SLO, violations of static-full, quality."""

    by = {r.policy: r for r in results}
    out = {}
    rate = trace.rate_fn
    low_windows = [row["t"] for row in by["router"].series if rate is not None and rate(row["t"] + 0.5) <= 0.5 * cap]
    over_windows = [row["t"] for row in by["router"].series if rate is not None and rate(row["t"] + 0.5) > cap]
    for name, r in by.items():
        s = dict(r.summary)
        low = [row for row in r.series if row["t"] in set(low_windows) and row["throughput_qps"] > 0]
        over = [row for row in r.series if row["t"] in set(over_windows) and row["throughput_qps"] > 0]
        w = sum(row["throughput_qps"] for row in low)
        s["low_load_quality"] = sum(row["throughput_qps"] * row["mean_quality"] for row in low) / w if w else None
        s["overload_windows"] = len(over)
        s["overload_windows_violating"] = sum(1 for row in over if not row["slo_ok"])
        out[name] = s
    if "router" in out and "static-full" in out and out["static-full"]["low_load_quality"]:
        out["router_low_load_quality_vs_full"] = out["router"]["low_load_quality"] / out["static-full"]["low_load_quality"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", default="/tmp/ed-bench/nq-minilm")
    ap.add_argument("--data-dir", default=os.environ.get("ELASTICDENSER_DATA",
                                                         str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--stages", default="build,profile,des,real")
    ap.add_argument("--reprofile", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="auto", help="query encoder path to profile and serve (auto, int8, ...)")
    ap.add_argument("--max-queries", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--reorder-queries", type=int, default=256)
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--serve-late", action="store_true",
                    help="serve requests that can no longer meet the SLO late instead of shedding them (as `serve --serve-late`)")
    ap.add_argument("--des-duration", type=float, default=300.0)
    ap.add_argument("--real-duration", type=float, default=90.0)
    ap.add_argument("--real-policies", default="router,static-full,static-smallest")
    ap.add_argument("--http", action="store_true", help="also run the real mode through the HTTP server")
    ap.add_argument("--http-policies", default="router", help="policies sent through HTTP (static: the point in each request)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from elasticdenser.serve import replay
    from elasticdenser.serve import simulate as sim
    from elasticdenser.serve.profile import load_profile
    from elasticdenser.serve.router import Router, RouterConfig
    from elasticdenser.serve.traces import parse_trace

    exp, out = Path(args.exp_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    if "build" in stages and not (exp / "manifest.json").is_file():
        t = time.time()
        build(exp, args.data_dir, args.reorder_queries)
        log(f"built in {time.time() - t:.0f} s")
    if "profile" in stages:
        m = json.loads((exp / "manifest.json").read_text())
        if args.reprofile or "profile" not in m:
            t = time.time()
            profile(exp, args.data_dir, args.max_queries, args.repeats, args.threads, args.backend)
            log(f"profiled in {time.time() - t:.0f} s")
    prof = load_profile(exp)
    cfg = RouterConfig(slo_ms=args.slo_ms, shed_late=not args.serve_late)  # as `elasticdenser serve` runs it
    full = sim.full_point(prof)
    cap = Router.static(prof, full, cfg).capacity[full]
    router = Router(prof, cfg)
    summary = {"profile": prof.to_json(), "capacity_1x_qps": cap, "router_table": router.describe(),
               "max_queue": router.max_queue, "config": cfg.__dict__}
    log(f"full point {full}: SLO capacity {cap:.1f} qps; router ladder {[p.name for p in router.ladder]}")
    for row in router.describe():
        log(f"  {row}")
    spec = "ramp:lo=0.2x,hi=3x,duration={d:g},hold=0.2,base=0.15"
    if "des" in stages:
        trace = parse_trace(spec.format(d=args.des_duration), cap, args.seed)
        t = time.time()
        res = sim.simulate_policies(trace.times, prof, config=cfg, seed=args.seed, duration=trace.duration)
        log(f"DES: {len(trace)} requests x {len(res)} policies in {time.time() - t:.1f} s")
        print(sim.format_summary(res, cfg.slo_ms))
        sim.write_csv(res, out / "router-des.csv")
        sim.plot(res, out / "router-des.png", prof, cfg.slo_ms, title=f"discrete-event: {trace.name} (1x = {cap:.0f} qps)")
        summary["des"] = {"trace": trace.name, "requests": len(trace), "criteria": criteria(res, cap, cfg.slo_ms, trace),
                          "switches": res[0].switches}
    if "real" in stages or "http" in stages or args.http:
        from elasticdenser.data import load_collection
        from elasticdenser.searcher import Searcher

        texts = [q.text for q in load_collection("nq-sample", args.data_dir).queries]
        random.Random(7).shuffle(texts)
        searcher = Searcher.open(exp, backend=args.backend)
        trace = parse_trace(spec.format(d=args.real_duration), cap, args.seed)
        policies = args.real_policies.split(",")
        des = sim.simulate_policies(trace.times, prof, policies, cfg, args.seed, duration=trace.duration)
        if "real" in stages:
            real = []
            for pol in policies:
                t = time.time()
                real.append(replay.run_real_inprocess(trace.times, searcher, prof, pol, texts, cfg, duration=trace.duration))
                log(f"real in-process {pol}: {time.time() - t:.0f} s")
            print("real run, in-process:")
            print(sim.format_summary(real, cfg.slo_ms))
            print("discrete-event on the same trace:")
            print(sim.format_summary(des, cfg.slo_ms))
            sim.write_csv(real, out / "router-real.csv")
            sim.plot(real, out / "router-real.png", prof, cfg.slo_ms, title=f"real in-process: {trace.name}")
            summary["real"] = {"trace": trace.name, "requests": len(trace),
                               "criteria": criteria(real, cap, cfg.slo_ms, trace),
                               "des_same_trace": criteria(des, cap, cfg.slo_ms, trace),
                               "switches": real[0].switches}
        if args.http or "http" in stages:
            import socket
            import subprocess
            import urllib.request

            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            cmd = [sys.executable, "-m", "elasticdenser", "serve", str(exp), "--port", str(port), "--threads",
                   str(args.threads), "--slo-ms", str(args.slo_ms), "--log-level", "warning"]
            log("starting " + " ".join(cmd))
            proc = subprocess.Popen(cmd)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(600):  # up to 120 s for the server to load the model
                    try:
                        urllib.request.urlopen(url + "/health", timeout=2).read()
                        break
                    except OSError:
                        if proc.poll() is not None:
                            raise RuntimeError("the server exited") from None
                        time.sleep(0.2)
                http = []
                for pol in args.http_policies.split(","):
                    t = time.time()
                    http.append(replay.run_real_http(trace.times, url, prof, pol, texts, cfg.slo_ms,
                                                  duration=trace.duration))
                    log(f"real HTTP {pol}: {time.time() - t:.0f} s")
                    time.sleep(3)  # let a static policy's backlog drain before the next policy
                metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
            finally:
                proc.terminate()
                proc.wait(60)
            print("real run, HTTP server (separate process):")
            print(sim.format_summary(http, cfg.slo_ms))
            sim.write_csv(http, out / "router-http.csv")
            sim.plot(http, out / "router-http.png", prof, cfg.slo_ms, title=f"real HTTP: {trace.name}")
            (out / "router-http-metrics.txt").write_text(metrics)
            summary["http"] = {"criteria": criteria(http, cap, cfg.slo_ms, trace), "switches": None}
    old = out / "router-summary.json"
    if old.is_file():  # keep the results of stages not run this time
        summary = {**json.loads(old.read_text()), **summary}
    old.write_text(json.dumps(summary, indent=2, default=str))
    log(f"wrote {out}/router-summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
