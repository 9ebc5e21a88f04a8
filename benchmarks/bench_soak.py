"""Soak and overload of `elasticdenser serve` on 127.0.0.1 (issue 15): slow clients, idle sockets,
a burst of 10x the full point's SLO capacity, then normal traffic again.

The server runs as its own process (the real CLI, the experiment's profile and query path); this
process is the load generator. Every request must be accounted for: a 200, or the server's own
503 with Retry-After (anything else -- a timeout, a reset, another status -- is "unaccounted").
Reported per phase: offered and achieved rates, outcomes, client p50/p99 of the 200s, the served
requests whose server-side latency exceeded the SLO, the time the server needed to answer normally
again after the burst, whether the slow and idle sockets were closed, and the server's RSS.

    HF_HUB_OFFLINE=1 python benchmarks/bench_soak.py --exp runs/nq-sample --slo-ms 50 \
        --out benchmarks/results/soak.json
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams.

    httpx spends far more CPU per request than the server does; on two shared cores it saturated
    this process's event loop (client p50 of seconds), so requests left the client in clumps and
    the server saw bursts that the schedule never offered. This client writes a prebuilt request
    and reads the status line, the headers and ``Content-Length`` bytes, nothing more."""

    def __init__(self, port: int, timeout_s: float = 30.0):
        self.port, self.timeout_s = port, timeout_s
        self.idle: list = []

    async def post_json(self, path: str, payload: dict):
        body = json.dumps(payload).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return await asyncio.wait_for(self._exchange(head + body), self.timeout_s)

    async def get_json(self, path: str) -> dict:
        status, _, body = await asyncio.wait_for(
            self._exchange(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()), self.timeout_s)
        return json.loads(body) if status == 200 else {"status": status}

    async def _exchange(self, request: bytes):
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            header = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()  # a kept-alive socket the server closed meanwhile: once more on a fresh one
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(request)
            header = await reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, headers, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def phase(client: LeanClient, rate: float, seconds: float, queries, name: str, t_zero: float):
    """Open-loop Poisson arrivals at ``rate`` for ``seconds``; one record per request."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10)
    times = np.cumsum(gaps)
    times = times[times < seconds]
    start = time.perf_counter()
    records = []

    async def one(i: int, at: float):
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        sent = time.perf_counter()
        rec = {"phase": name, "t": sent - t_zero, "late_send_ms": (sent - start - at) * 1000.0}
        try:
            status, headers, body = await client.post_json("/search", {"query": queries[i % len(queries)], "k": 10})
            rec["status"] = status
            rec["retry_after"] = headers.get("retry-after")
            if status == 200:
                rec["server_ms"] = json.loads(body)["latency_ms"]
            elif status == 503:  # shed in the queue (it waited too long) or refused at the door (queue full)
                rec["reason"] = "queue" if b"already queued" in body else "late"
        except Exception as exc:  # a timeout or a reset: unaccounted
            rec["status"] = type(exc).__name__
        rec["client_ms"] = (time.perf_counter() - sent) * 1000.0
        records.append(rec)

    await asyncio.gather(*(one(i, float(at)) for i, at in enumerate(times)))
    return records, len(times) / seconds


def summary(records, slo_ms: float) -> dict:
    ok = [r for r in records if r["status"] == 200]
    busy = [r for r in records if r["status"] == 503]
    client = np.array([r["client_ms"] for r in ok]) if ok else np.zeros(0)
    return {
        "requests": len(records),
        "ok": len(ok),
        "rejected_503": len(busy),
        "rejected_late": sum(1 for r in busy if r.get("reason") == "late"),
        "rejected_without_retry_after": sum(1 for r in busy if not r["retry_after"]),
        "unaccounted": len(records) - len(ok) - len(busy),
        "client_p50_ms": float(np.percentile(client, 50)) if len(client) else None,
        "client_p99_ms": float(np.percentile(client, 99)) if len(client) else None,
        "server_p99_ms": float(np.percentile([r["server_ms"] for r in ok], 99)) if ok else None,
        "served_beyond_slo": sum(1 for r in ok if r["server_ms"] > slo_ms),
        # how far behind its schedule this load generator sent (a saturated client offers bursts)
        "send_lag_p99_ms": float(np.percentile([r["late_send_ms"] for r in records], 99)) if records else None,
    }


async def slow_and_idle(port: int, n_slow: int, n_idle: int, seconds: float) -> dict:
    """Slow clients (headers one byte every 0.2 s, for ever) and idle sockets (never a byte), held
    for ``seconds``; how many of each the server closed."""
    request = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    async def slow(deadline: float) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in itertools.cycle(request):
                if time.perf_counter() > deadline:
                    return False
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1), timeout=0.2)
                except TimeoutError:
                    continue
                return True  # EOF or an error response: the server let go of it
        except (ConnectionError, OSError):
            return True
        finally:
            writer.close()
        return False

    async def idle(deadline: float) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(reader.read(1), timeout=max(0.0, deadline - time.perf_counter())) == b""
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True
        finally:
            writer.close()

    deadline = time.perf_counter() + seconds
    results = await asyncio.gather(*[slow(deadline) for _ in range(n_slow)], *[idle(deadline) for _ in range(n_idle)])
    return {"slow_clients": n_slow, "slow_closed_by_server": sum(results[:n_slow]),
            "idle_sockets": n_idle, "idle_closed_by_server": sum(results[n_slow:])}


async def run(args, port: int, pid: int, capacity: float, queries) -> dict:
    out = {"capacity_qps": capacity, "slo_ms": args.slo_ms, "rss_mb": {"start": rss_mb(pid)}}
    client = LeanClient(port)
    health = {}  # the router's state after each phase (point, queue bound, rate estimate)
    try:
        t0 = time.perf_counter()
        normal = args.normal * capacity
        rec1, rate1 = await phase(client, normal, args.seconds, queries, "normal", t0)
        health["normal"] = await client.get_json("/health")
        out["rss_mb"]["after_normal"] = rss_mb(pid)
        side = asyncio.create_task(slow_and_idle(port, args.slow_clients, args.idle_sockets, args.seconds * 2))
        rec2, rate2 = await phase(client, normal, args.seconds, queries, "normal+slow+idle", t0)
        health["normal+slow+idle"] = await client.get_json("/health")
        burst_start = time.perf_counter() - t0
        rec3, rate3 = await phase(client, args.burst * capacity, args.burst_seconds, queries, "burst", t0)
        health["burst"] = await client.get_json("/health")
        burst_end = time.perf_counter() - t0
        rec4, rate4 = await phase(client, normal, args.seconds, queries, "after", t0)
        health["after"] = await client.get_json("/health")
        sockets = await side
        out["rss_mb"]["end"] = rss_mb(pid)
    finally:
        client.close()
    phases = {}
    for name, recs, rate in (("normal", rec1, rate1), ("normal+slow+idle", rec2, rate2), ("burst", rec3, rate3),
                             ("after", rec4, rate4)):
        phases[name] = {"offered_qps": round(rate, 1), **summary(recs, args.slo_ms)}
    # recovery: the first 0.25-s window after the burst whose requests were all served within the SLO
    after = sorted(rec4, key=lambda r: r["t"])
    recovery = None
    for lo in np.arange(burst_end, burst_end + args.seconds, 0.25):
        window = [r for r in after if lo <= r["t"] < lo + 0.25]
        if window and all(r["status"] == 200 and r["server_ms"] <= args.slo_ms for r in window):
            recovery = round(float(lo - burst_end), 2)
            break
    out.update(phases=phases, health=health, sockets=sockets, burst_start_s=round(burst_start, 2),
               recovery_s_after_burst=recovery)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="a profiled experiment directory")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--normal", type=float, default=0.5, help="normal load, x the full point's SLO capacity")
    ap.add_argument("--burst", type=float, default=10.0, help="burst load, x the full point's SLO capacity")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each normal phase")
    ap.add_argument("--burst-seconds", type=float, default=3.0)
    ap.add_argument("--slow-clients", type=int, default=20)
    ap.add_argument("--idle-sockets", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from elasticdenser.data import load_collection
    from elasticdenser.serve.profile import load_profile
    from elasticdenser.serve.router import Router, RouterConfig

    profile = load_profile(args.exp)
    router = Router(profile, RouterConfig(slo_ms=args.slo_ms))
    capacity = router.capacity[router.best.name]
    manifest = json.loads((Path(args.exp) / "manifest.json").read_text())
    queries = [q.text for q in load_collection(manifest["collection"]["name"], args.data_dir).queries]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "elasticdenser", "serve", args.exp, "--port", str(port),
                               "--slo-ms", str(args.slo_ms), "--log-level", "warning"],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        end = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > end or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        result = asyncio.run(run(args, port, server.pid, capacity, queries))
    finally:
        server.terminate()
        server.wait(30)
    result["machine"] = {"cpu_count": os.cpu_count(), "cpu": next((line.split(":", 1)[1].strip() for line in
                                                                    Path("/proc/cpuinfo").read_text().splitlines()
                                                                    if line.startswith("model name")), "")}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from elasticdenser.atomic import write_text

        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
