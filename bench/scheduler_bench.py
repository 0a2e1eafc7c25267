"""Jobs through the whole Ray path (Redis -> consumer actor -> worker actor -> Redis), with the sleep runner.

    python bench/scheduler_bench.py [--jobs 2000] [--latency-jobs 200] [--baseline] [--batch-budget S]

Prints: end-to-end jobs/s for N sleep(0) jobs on warm workers; submit-to-start latency
p50/p99 on an idle system (one job at a time); progress publish-to-subscriber latency
p50/p99; the CPU each kind of process spent per job. With --baseline, bare Ray actor calls
of the same shape for comparison. `--batch-budget 0` hands each job to its worker in a Ray call
of its own (the default batches short jobs, see DASH_BATCH_BUDGET_S). Local Ray on loopback; REDIS_URL if set, else an embedded Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray.config import load_settings
from dash_ray.queues import EmbeddedRedis, EventHub, JobStore, connect
from dash_ray.scheduler import queue_specs
from dash_ray.scheduler.cluster import Scheduler, init_ray


def cpu_seconds(pid: int | str) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on this machine (Linux /proc)."""
    out: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            used = cpu_seconds(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) == os.getpid():
            kind = "bench client"
        elif "ray::ConsumerActor" in cmd:
            kind = "consumer actor"
        elif "ray::WorkerActor" in cmd:
            kind = "worker actors"
        elif "redis-server" in cmd:
            kind = "redis"
        elif "ray" in cmd:
            kind = "ray system"
        else:
            kind = "other"
        out[kind] = out.get(kind, 0.0) + used
    return out


def ray_baseline(workers: int, calls: int) -> tuple[float, float]:
    """Bare Ray for comparison: an async actor calling a no-op method of `workers` actors shaped
    like dash-ray's workers (a control concurrency group, task events off), one call in flight per
    actor. Returns (calls/s, CPU ms per call of the caller and the actors together)."""
    import ray

    @ray.remote(num_cpus=0, concurrency_groups={"control": 2}, enable_task_events=False)
    class Noop:
        def run(self, job: dict[str, Any]) -> dict[str, Any]:
            return {"ok": True, "result": {"attempt": job["attempt"]}}

        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0)
    class Caller:
        def __init__(self, targets: list[Any]) -> None:
            self.targets = targets

        def pid(self) -> int:
            return os.getpid()

        async def go(self, n: int) -> float:
            left = n

            async def loop(target: Any) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await target.run.remote({"id": "x" * 32, "queue": "sleep", "data": {"userId": "bench"},
                                             "attempt": 1})

            t0 = time.perf_counter()
            await asyncio.gather(*(loop(t) for t in self.targets))
            return n / (time.perf_counter() - t0)

    def cpu_of(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    targets = [Noop.remote() for _ in range(workers)]
    caller = Caller.remote(targets)
    pids = ray.get([t.pid.remote() for t in targets] + [caller.pid.remote()])
    ray.get(caller.go.remote(200))
    c0 = cpu_of(pids) if sys.platform == "linux" else 0.0
    rate = ray.get(caller.go.remote(calls))
    c1 = cpu_of(pids) if sys.platform == "linux" else 0.0
    for actor in [*targets, caller]:
        ray.kill(actor)
    return rate, (c1 - c0) * 1000 / calls


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def throughput(store: JobStore, hub: EventHub, n: int, prefill: bool = False,
                     cpu: list[dict[str, float]] | None = None) -> float:
    """Jobs/s from submit to the last completion; with prefill, submit into a paused queue and
    time only the drain (the Ray path alone, without the submitting client competing for CPU)."""
    done = asyncio.Event()
    finished = 0

    def on_event(_ch: str, data: str) -> None:
        nonlocal finished
        if '"type":"job:completed"' in data:
            finished += 1
            if finished >= n:
                done.set()

    ids = [uuid.uuid4().hex for _ in range(n)]
    for job_id in ids:
        await hub.add(store.keys.channel(job_id), on_event)
    sem = asyncio.Semaphore(64)

    async def submit(job_id: str) -> None:
        async with sem:
            await store.add("sleep", {"userId": "bench", "jobId": job_id})

    if prefill:
        await store.pause("sleep")
        await asyncio.gather(*(submit(i) for i in ids))
        if cpu is not None and sys.platform == "linux":
            cpu.append(cpu_by_process())
        t0 = time.perf_counter()
        await store.resume("sleep")
    else:
        t0 = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in ids))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    if cpu:
        cpu.append(cpu_by_process())
    for job_id in ids:
        await hub.remove(store.keys.channel(job_id), on_event)
    return n / elapsed


START = "submit to the subscriber's `active`"


async def start_hops(store: JobStore, hub: EventHub, n: int) -> dict[str, list[float]]:
    """One job at a time on an idle system: ms from the submit to its `active` event at a
    subscriber, and by hop: the add's reply; the consumer's take (BullMQ's `processedOn`, Redis's
    clock as the take runs, in whole ms); the `active` event being made (its `ts`: the take makes
    it, in the same script, for the first job it hands out); the event reaching the subscriber."""
    out: dict[str, list[float]] = {k: [] for k in (
        START, "submit to the add's reply", "submit to the consumer's take",
        "the take to the `active` event", "the event to the subscriber")}
    for _ in range(n):
        job_id = uuid.uuid4().hex
        got: dict[str, float] = {}
        done = asyncio.Event()

        def on_event(_ch: str, data: str, got: dict[str, float] = got, done: asyncio.Event = done) -> None:
            ev = json.loads(data)
            if ev.get("status") == "active" and "active" not in got:
                got["active"], got["ts"] = time.time(), float(ev["ts"])
            if ev["type"] == "job:completed":
                done.set()

        await hub.add(store.keys.channel(job_id), on_event)
        t0 = time.time()
        await store.add("sleep", {"userId": "bench", "jobId": job_id})
        added = time.time()
        await asyncio.wait_for(done.wait(), 30)
        await hub.remove(store.keys.channel(job_id), on_event)
        taken = float(await store.redis.hget(store.keys.bull("sleep", job_id), "processedOn") or 0) / 1000
        for key, ms in zip(out, ((got["active"] - t0), (added - t0), (taken - t0), (got["ts"] - taken),
                                 (got["active"] - got["ts"])), strict=True):
            out[key].append(ms * 1000)
        await asyncio.sleep(0.02)
    return out


async def start_latency(store: JobStore, hub: EventHub, n: int) -> list[float]:
    """Submit one job at a time on an idle system; ms from submit to its `active` event."""
    return (await start_hops(store, hub, n))[START]


async def event_latency(store: JobStore, hub: EventHub, jobs: int, steps: int) -> list[float]:
    """ms from a progress event's publish (its ts) to its arrival at a pub/sub subscriber."""
    lat: list[float] = []
    done = asyncio.Event()
    finished = 0

    def on_event(_ch: str, data: str) -> None:
        nonlocal finished
        now = time.time()
        ev = json.loads(data)
        if ev.get("step"):
            lat.append((now - ev["ts"]) * 1000)
        if ev["type"] == "job:completed":
            finished += 1
            if finished >= jobs:
                done.set()

    ids = [uuid.uuid4().hex for _ in range(jobs)]
    for job_id in ids:
        await hub.add(store.keys.channel(job_id), on_event)
    for job_id in ids:
        # 10 steps over 1 s: 10 events/s per job, under the 20/s throttle so every one is sent
        await store.add("sleep", {"userId": "bench", "jobId": job_id, "durationS": steps / 10, "steps": steps})
    await asyncio.wait_for(done.wait(), 120)
    return lat


async def run(url: str, args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    extra = {} if args.batch_budget is None else {"batch_budget_s": args.batch_budget}
    settings = load_settings(key_prefix=prefix, worker_idle_s=600, **extra)
    specs = [s for s in queue_specs(settings, test_queues=True) if s.name == "sleep"]
    t0 = time.perf_counter()
    init_ray(settings, queue_specs(settings, test_queues=True))
    sched = Scheduler(settings, url, specs)
    sched.start()
    print(f"ray + scheduler up in {time.perf_counter() - t0:.1f}s")
    r = connect(url)
    store = JobStore(r, prefix=prefix, queues=("sleep",), user_history_max=100)
    hub = EventHub(url)
    await hub.start()
    try:
        # Warm all the queue's workers first: a worker process started during the measurement
        # (seconds of CPU to import) would be counted against the drain.
        slots = specs[0].concurrency
        for _ in range(30):
            workers = (await asyncio.to_thread(sched.stats))["sleep"]["workers"]
            if workers["idle"] + workers["busy"] >= slots:
                break
            await throughput(store, hub, 200, prefill=True)
        else:
            raise RuntimeError(f"could not start {slots} workers: {workers}")
        for _ in range(50):  # surplus workers asked for during the warm-up are dropped once idle
            if not (await asyncio.to_thread(sched.stats))["sleep"]["workers"]["pending"]:
                break
            await asyncio.sleep(0.1)
        cpu: list[dict[str, float]] = []
        calls0 = (await asyncio.to_thread(sched.stats))["sleep"]["worker_calls"]
        drain = await throughput(store, hub, args.jobs, prefill=True, cpu=cpu)
        calls = (await asyncio.to_thread(sched.stats))["sleep"]["worker_calls"] - calls0
        jps = await throughput(store, hub, args.jobs)
        lat = await start_latency(store, hub, args.latency_jobs)
        ev = await event_latency(store, hub, jobs=5, steps=10)
        workers = (await asyncio.to_thread(sched.stats))["sleep"]["workers"]
        base = None
        if args.baseline:
            await asyncio.to_thread(sched.stop, 5)  # its workers leave the machine to the baseline
            base = await asyncio.to_thread(ray_baseline, slots, args.jobs)
        print(f"\nworkers: {workers}  redis: {'embedded' if 'embedded' in url else url}")
        print(f"through Ray       {drain:8.0f} jobs/s   ({args.jobs} queued sleep(0) jobs drained by {slots} warm workers, "
              f"{args.jobs / max(calls, 1):.1f} jobs per Ray call, batch budget {settings.batch_budget_s:g} s)   target >= 300")
        if cpu:
            cpu0, cpu1 = cpu
            parts = sorted(((k, (cpu1[k] - cpu0.get(k, 0.0)) * 1000 / args.jobs) for k in cpu1), key=lambda kv: -kv[1])
            print("CPU per job while draining: " + ", ".join(f"{k} {v:.2f} ms" for k, v in parts if v >= 0.01)
                  + f"; total {sum(v for _, v in parts):.2f} ms")
        if base:
            print(f"bare Ray baseline {base[0]:8.0f} calls/s  ({args.jobs} no-op actor calls, {slots} actors, "
                  f"one call in flight each; {base[1]:.2f} ms of CPU per call)")
        print(f"submit+complete   {jps:8.0f} jobs/s   ({args.jobs} jobs submitted by this client while they run)")
        print(f"submit-to-start   p50 {statistics.median(lat):6.2f} ms   p99 {pct(lat, 99):6.2f} ms   "
              f"({len(lat)} jobs, one at a time)   target p50 <= 20 ms")
        print(f"progress event    p50 {statistics.median(ev):6.2f} ms   p99 {pct(ev, 99):6.2f} ms   "
              f"({len(ev)} events, publish -> subscriber)   target p99 <= 10 ms")
    finally:
        await hub.close()
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=5000)]
        for i in range(0, len(keys), 1000):
            await r.delete(*keys[i : i + 1000])
        await r.aclose()
        sched.stop(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--latency-jobs", type=int, default=200)
    ap.add_argument("--baseline", action="store_true",
                    help="also time bare Ray actor calls of the same shape, without Redis or dash-ray")
    ap.add_argument("--batch-budget", type=float, default=None,
                    help="seconds of short jobs a worker gets per Ray call (default: DASH_BATCH_BUDGET_S; 0: one job per call)")
    args = ap.parse_args()
    url = load_settings().resolved_redis_url()
    server = None
    if url is None:
        server = EmbeddedRedis(tempfile.mkdtemp(prefix="dash-bench-"), server=load_settings().redis_server)
        url = server.start()
    try:
        asyncio.run(run(url, args))
    finally:
        import ray

        ray.shutdown()
        if server:
            server.stop()


if __name__ == "__main__":
    main()
