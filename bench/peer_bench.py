"""dash-ray against the bare tools a user could pick instead, in one process tree; prints each ratio.

    python bench/peer_bench.py [--jobs 2000] [--rest-jobs 2000] [--in-flight 32] [--rounds 2]
                               [--sockets 500] [--only drain,submit,rest,start,sockets]

Every pair runs on the same Redis, one after the other (peer, then dash-ray, `--rounds` times;
the median of each side is compared):

- drain: a backlog of N no-op jobs. Peer: bullmq's `Worker` (concurrency = dash-ray's warm
  workers). dash-ray: the `sleep` queue's consumer actor and its warm worker actors through Ray.
- submit while running: N jobs added (64 in flight) while they are consumed. Peer: bullmq
  `Queue.add` with a `Worker` running. dash-ray: `JobStore.add` with the Ray scheduler running.
- REST submit: N POSTs a round (`--in-flight` at once) of the same generation payload from one
  httpx client, into a queue nothing consumes. The three servers run at once and are driven in
  turn, in short segments whose order turns, so a slow spell of the machine falls on all of them;
  the ratio is the median of the segments' ratios. Peer: bench/peers/fastapi_bullmq.py under uvicorn
  (FastAPI, pydantic, `Queue.add`). dash-ray: the gateway as `dash-ray up` runs it (a Ray Serve
  replica serving the port itself), and the same app under plain uvicorn (no Ray), which splits
  the cost between the app and its Ray host.
- submit-to-start p50: one job at a time on an idle system, submit to its `active` event.
- sockets: `--sockets` WebSockets, 10 progress events/s each (bench/gateway_bench.py's load).

REDIS_URL if set, else an embedded Redis (DASH_REDIS_SERVER picks which). Loopback only; every
process it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks, whose phases it runs

import gateway_bench
import httpx
import psutil
import scheduler_bench
from bullmq import Queue, Worker

from dash_ray.config import load_settings
from dash_ray.gateway import TokenAuth
from dash_ray.queues import EmbeddedRedis, EventHub, JobStore, connect
from dash_ray.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = 4  # REST: each round's POSTs per server, in this many turns
SECRET = "bench-secret-0123456789abcdef-0123456789"
BODY = {"prompt": "a red fox in the snow", "settings": {"steps": 20, "width": 64, "height": 64}}


async def bull_jobs(url: str, n: int, concurrency: int, backlog: bool) -> float:
    """jobs/s of a bullmq Worker (`concurrency`) over n no-op jobs: with `backlog`, all added
    before it starts and only the drain timed; else added while it consumes, from the first add
    to the last completion."""
    prefix = f"pb{uuid.uuid4().hex[:8]}"
    queue = Queue("bench", {"connection": url, "prefix": prefix})
    sem = asyncio.Semaphore(64)
    done = asyncio.Event()
    count = 0

    async def add(i: int) -> None:
        async with sem:
            await queue.add("noop", {"i": i}, {"removeOnComplete": 1000})

    async def process(job: Any, token: Any) -> None:
        return None

    def on_completed(*_a: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    if backlog:
        await asyncio.gather(*(add(i) for i in range(n)))
    t0 = time.perf_counter()
    worker = Worker("bench", process, {"connection": url, "prefix": prefix, "concurrency": concurrency})
    worker.on("completed", on_completed)
    if not backlog:
        await asyncio.gather(*(add(i) for i in range(n)))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    await worker.close()
    await queue.obliterate(force=True)
    await queue.close()
    return n / elapsed


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def rest(base: str, n: int, in_flight: int, token: str | None, pid: int | None = None) -> tuple[float, float]:
    """(POSTs/s, ms of the server process's CPU per POST) of n generation submits, in_flight at
    once, from one httpx client."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sem = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        for _ in range(min(in_flight, 50)):  # warm: connections open, scripts loaded
            r = await client.post("/v1/jobs/generation", json=BODY)
            assert r.status_code == 201, r.text

        async def one() -> None:
            async with sem:
                r = await client.post("/v1/jobs/generation", json=BODY)
                assert r.status_code == 201, r.text

        t0, c0 = time.perf_counter(), cpu_s(pid) if pid else 0.0
        await asyncio.gather(*(one() for _ in range(n)))
        wall, cpu = time.perf_counter() - t0, (cpu_s(pid) - c0) if pid else float("nan")
        return n / wall, 1000 * cpu / n


def ray_call_latency(n: int) -> tuple[float, float]:
    """p50 ms, on the running Ray, from an async actor's call to a threaded actor until the call
    begins there, and its round trip: the shape of the consumer's call to a worker."""
    import ray

    @ray.remote(num_cpus=0)
    class Callee:
        def run(self, jobs: list[dict[str, Any]]) -> float:
            return time.time()

    @ray.remote(num_cpus=0)
    class Caller:
        def __init__(self, callee: Any) -> None:
            self.callee = callee

        async def probe(self, n: int) -> tuple[float, float]:
            begin, round_trip = [], []
            for _ in range(n):
                t0 = time.time()
                began = await self.callee.run.remote([{"id": "x" * 32, "data": {"userId": "bench"}}])
                begin.append((began - t0) * 1000)
                round_trip.append((time.time() - t0) * 1000)
                await asyncio.sleep(0.01)
            return statistics.median(begin), statistics.median(round_trip)

    callee = Callee.remote()  # type: ignore[attr-defined]
    caller = Caller.remote(callee)  # type: ignore[attr-defined]
    try:
        ray.get(caller.probe.remote(20))
        return tuple(ray.get(caller.probe.remote(n)))  # type: ignore[return-value]
    finally:
        ray.kill(caller)
        ray.kill(callee)


def start_uvicorn(target: str, port: int, env: dict[str, str], factory: bool = False) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), target,
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(cmd, env={**os.environ, **env}, cwd=str(ROOT))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def redacted(url: str) -> str:
    """A Redis URL without its password (the embedded one has one)."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.rows: list[tuple[str, str, str, str]] = []
        self.prefix = f"pbd{uuid.uuid4().hex[:6]}"
        self.env_settings: dict[str, Any] = {
            "key_prefix": self.prefix, "token_secret": SECRET, "data_dir": tempfile.mkdtemp(prefix="dash-pb-"),
            "rate_submit": "1000000/minute", "max_waiting_per_user": 1_000_000, "max_sockets_per_user": 100_000,
            "max_bytes_per_user": 1 << 40,  # the peer keeps no budget: rounds of paused submits would fill ours
            "worker_idle_s": 600}

    def row(self, path: str, dash: float, peer: float | None, unit: str, target: str) -> None:
        ratio = f"{dash / peer:.2f}x" if peer else "-"
        peer_s = f"{peer:,.0f} {unit}" if peer else "-"
        self.rows.append((path, f"{dash:,.0f} {unit}" if unit == "jobs/s" else f"{dash:.2f} {unit}", peer_s,
                          f"{ratio} ({target})"))

    # -------------------------------------------------------------- through Ray
    async def scheduler_phases(self, want: set[str]) -> None:
        from dash_ray.scheduler import queue_specs
        from dash_ray.scheduler.cluster import Scheduler, init_ray

        a = self.args
        settings = load_settings(**self.env_settings)
        specs = [s for s in queue_specs(settings, test_queues=True) if s.name == "sleep"]
        init_ray(settings, queue_specs(settings, test_queues=True))
        sched = Scheduler(settings, self.url, specs)
        sched.start()
        slots = specs[0].concurrency
        r = connect(self.url)
        store = JobStore(r, prefix=self.prefix, queues=("sleep",), user_history_max=100)
        hub = EventHub(self.url)
        await hub.start()
        try:
            deadline = time.monotonic() + 120
            while True:  # every worker warm before anything is timed
                workers = (await asyncio.to_thread(sched.stats))["sleep"]["workers"]
                if workers["idle"] + workers["busy"] >= slots:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not start {slots} workers: {workers}")
                if workers["pending"]:
                    await asyncio.sleep(0.2)  # starting: a backlog keeps them wanted
                    await scheduler_bench.throughput(store, hub, 50, prefill=True)
                else:
                    await scheduler_bench.throughput(store, hub, 1000, prefill=True)
            drains: dict[str, list[float]] = {"peer": [], "dash": []}
            subs: dict[str, list[float]] = {"peer": [], "dash": []}
            for _ in range(a.rounds):
                if "drain" in want:
                    drains["peer"].append(await bull_jobs(self.url, a.jobs, slots, backlog=True))
                    drains["dash"].append(await scheduler_bench.throughput(store, hub, a.jobs, prefill=True))
                    print(f"  drain: bullmq {drains['peer'][-1]:,.0f}  dash-ray {drains['dash'][-1]:,.0f} jobs/s", flush=True)
                if "submit" in want:
                    subs["peer"].append(await bull_jobs(self.url, a.jobs, slots, backlog=False))
                    subs["dash"].append(await scheduler_bench.throughput(store, hub, a.jobs))
                    print(f"  submit while running: bullmq {subs['peer'][-1]:,.0f}  dash-ray {subs['dash'][-1]:,.0f} jobs/s",
                          flush=True)
            if "drain" in want:
                self.row(f"drain a backlog of {a.jobs} no-op jobs ({slots} workers)", med(drains["dash"]),
                         med(drains["peer"]), "jobs/s", "target >= 0.9x")
            if "submit" in want:
                self.row(f"submit while running (add + consume, {a.jobs} jobs)", med(subs["dash"]), med(subs["peer"]),
                         "jobs/s", "target >= 0.9x")
            if "start" in want:
                hops = await scheduler_bench.start_hops(store, hub, a.latency_jobs)
                lat = hops[scheduler_bench.START]
                print(f"  submit-to-start p50 {statistics.median(lat):.2f} ms  p99 {scheduler_bench.pct(lat, 99):.2f} ms",
                      flush=True)
                for name, values in hops.items():
                    print(f"    {name:46s} p50 {statistics.median(values):6.2f} ms", flush=True)
                begin, round_trip = await asyncio.to_thread(ray_call_latency, 200)
                print(f"    bare Ray: an async actor's call to a threaded actor begins after {begin:.2f} ms p50 "
                      f"({round_trip:.2f} ms round trip)", flush=True)
                self.row(f"submit-to-start p50, idle ({a.latency_jobs} jobs)", statistics.median(lat), None, "ms",
                         "target <= 3 ms")
        finally:
            await hub.close()
            keys = [k async for k in r.scan_iter(match=f"{self.prefix}:*", count=5000)]
            for i in range(0, len(keys), 1000):
                await r.delete(*keys[i: i + 1000])
            await r.aclose()
            await asyncio.to_thread(sched.stop, 5)

    # -------------------------------------------------------------- gateway
    def gateway_phases(self, want: set[str]) -> None:
        from ray import serve

        from dash_ray.app import build_app, run_gateway, wait_healthy
        from dash_ray.scheduler.cluster import init_ray
        from dash_ray.scheduler.resources import queue_specs

        a = self.args
        token = TokenAuth(SECRET).mint("rest-bench")
        env = {"REDIS_URL": self.url, **{f"DASH_{k.upper()}": str(v) for k, v in self.env_settings.items()}}
        rests: dict[str, list[float]] = {"peer": [], "serve": [], "uvicorn": []}
        cpus: dict[str, list[float]] = {"peer": [], "serve": [], "uvicorn": []}
        port = free_port()
        settings = load_settings(**self.env_settings, host="127.0.0.1", websocket_port=port)
        init_ray(settings, queue_specs(settings))
        base = run_gateway(settings, build_app(settings, self.url, specs=queue_specs(settings), scheduler=False),
                           "peerbench", timeout_s=120)
        replica = next(p.pid for p in psutil.process_iter(["cmdline"])
                       if "ServeReplica:peerbench:Gateway" in " ".join(p.info["cmdline"] or []))

        def record(side: str, got: tuple[float, float]) -> None:
            rests[side].append(got[0])
            cpus[side].append(got[1])

        try:
            if "rest" in want:
                # All three servers up at once, driven in turn in short segments (the order turning
                # each time): a slow spell of the machine falls on all three, and each segment's
                # ratio compares servers measured seconds apart.
                peer_port, uv_port = free_port(), free_port()
                peer = start_uvicorn("bench.peers.fastapi_bullmq:app", peer_port,
                                     {"REDIS_URL": self.url, "PEER_PREFIX": f"pp{uuid.uuid4().hex[:6]}"})
                uv = start_uvicorn("dash_ray.gateway.asgi:app", uv_port, env, factory=True)
                ratios: dict[str, list[float]] = {"serve": [], "uvicorn": []}
                try:
                    wait_healthy(f"http://127.0.0.1:{peer_port}", 60)
                    wait_healthy(f"http://127.0.0.1:{uv_port}", 60)
                    sides = {"peer": (f"http://127.0.0.1:{peer_port}", None, peer.pid), "serve": (base, token, replica),
                             "uvicorn": (f"http://127.0.0.1:{uv_port}", token, uv.pid)}
                    per = max(100, a.rest_jobs // SEGMENTS)
                    for r in range(a.rounds):
                        for seg in range(SEGMENTS):
                            order = ["peer", "serve", "uvicorn"]
                            k = (r * SEGMENTS + seg) % 3
                            got: dict[str, float] = {}
                            for side in order[k:] + order[:k]:
                                url, tok, pid = sides[side]
                                record(side, asyncio.run(rest(url, per, a.in_flight, tok, pid)))
                                got[side] = rests[side][-1]
                            for side in ratios:
                                ratios[side].append(got[side] / got["peer"])
                        n = SEGMENTS
                        print("  REST submit: " + ", ".join(
                            f"{label} {med(rests[k][-n:]):,.0f} jobs/s ({med(cpus[k][-n:]):.2f} ms CPU per POST)"
                            for k, label in (("peer", "FastAPI+bullmq"), ("serve", "dash-ray (Serve replica)"),
                                             ("uvicorn", "dash-ray app (plain uvicorn)")))
                            + f"; segment ratios {', '.join(f'{x:.2f}' for x in ratios['serve'][-n:])}", flush=True)
                finally:
                    stop(peer)
                    stop(uv)
                # The ratio is the median of the segments' ratios (each pair measured seconds apart), so
                # it need not equal the quotient of the two medians of jobs/s beside it.
                for side, path, note in (
                        ("serve", f"REST submit ({per * SEGMENTS} POSTs a round, in {SEGMENTS} segments, "
                                  f"{a.in_flight} in flight), as `dash-ray up` serves it", "target >= 0.9x"),
                        ("uvicorn", "REST submit, the same app under plain uvicorn (no Ray)", "the app's own cost")):
                    self.rows.append((path, f"{med(rests[side]):,.0f} jobs/s", f"{med(rests['peer']):,.0f} jobs/s",
                                      f"{med(ratios[side]):.2f}x ({note}; segments {min(ratios[side]):.2f}-"
                                      f"{max(ratios[side]):.2f}x)"))
                # The server's CPU per POST moves far less than jobs/s with the machine's load: the
                # peer's over ours is the throughput ratio of saturated servers.
                serve_cpu, uv_cpu, peer_cpu = med(cpus["serve"]), med(cpus["uvicorn"]), med(cpus["peer"])
                self.rows.append(("REST submit: the server process's CPU per POST (Serve replica; plain uvicorn)",
                                  f"{serve_cpu:.2f} ms; {uv_cpu:.2f} ms", f"{peer_cpu:.2f} ms",
                                  f"{peer_cpu / serve_cpu:.2f}x; {peer_cpu / uv_cpu:.2f}x (peer's CPU over ours)"))
            if "sockets" in want:
                ns = argparse.Namespace(sockets=a.sockets, rate=10.0, seconds=10.0)
                ws = asyncio.run(gateway_bench.sockets_phase(ns, self.url, self.prefix, base))
                print(f"  sockets: {ws['events_per_s']:,.0f} events/s  p50 {ws['p50']:.1f} ms  p99 {ws['p99']:.1f} ms  "
                      f"lost {ws['lost']}", flush=True)
                self.row(f"{a.sockets} sockets x 10 events/s: p99 (lost {ws['lost']} of {ws['published']})", ws["p99"],
                         None, "ms", "target <= 50 ms")
        finally:
            serve.shutdown()

    def report(self) -> None:
        print(f"\npeer_bench  jobs={self.args.jobs} rest_jobs={self.args.rest_jobs} in_flight={self.args.in_flight} "
              f"rounds={self.args.rounds} redis={redacted(self.url)}")
        print("| path | dash-ray | bare peer | ratio |")
        print("|---|---:|---:|---:|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rest-jobs", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--latency-jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sockets", type=int, default=500)
    ap.add_argument("--only", default="drain,submit,rest,start,sockets")
    args = ap.parse_args()
    want = set(args.only.split(","))
    settings = load_settings()
    url = settings.resolved_redis_url()
    server = None
    if url is None:
        server = EmbeddedRedis(tempfile.mkdtemp(prefix="dash-pb-"), server=settings.redis_server)
        url = server.start()
    bench = Bench(args, url)
    try:
        if want & {"drain", "submit", "start"}:
            asyncio.run(bench.scheduler_phases(want))
        if want & {"rest", "sockets"}:
            bench.gateway_phases(want)
        bench.report()
    finally:
        import ray

        ray.shutdown()
        if server:
            server.stop()


if __name__ == "__main__":
    main()
