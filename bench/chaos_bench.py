"""Recovery from faults while the queue is busy: a Redis outage (or, with `--sentinel`, the
Redis primary lost and replaced) and a killed worker.

    python bench/chaos_bench.py [--outage-s 3] [--fsync always] [--job-s 0.02]
    python bench/chaos_bench.py --sentinel [--wait-replicas 1]
    python bench/chaos_bench.py --gcs [--outage-s 3]

The `sleep` queue (5 warm workers) runs short jobs, kept topped up to a backlog of 200. Then:
1. Redis is SIGKILLed, stays down `--outage-s`, and restarts from its append-only file;
2. one busy worker process is SIGKILLed.
With `--sentinel`, Redis is a primary, its replicas and three sentinels of this machine's
`redis-server` (dash_ray/testing/sentinel.py), every part connected through the sentinels, and
fault 1 is the primary SIGKILLed: the sentinels promote a replica and everything follows it.
`--wait-replicas 1` turns on DASH_REDIS_WAIT_REPLICAS (with two replicas, so one is left).
With `--gcs`, Ray is a head and a GPU node raylet (`ray.cluster_utils.Cluster`) whose GCS keeps
its state in a Redis of its own (GCS fault tolerance, `RAY_REDIS_ADDRESS`), and fault 1 is the
head's GCS process killed and started again `--outage-s` later.
For each fault it prints the jobs/s over the 5 s before it, the time from the fault to the next
completed job, the time until throughput is back to 80% of before (measured in 1 s windows),
and the jobs/s over the 5 s from then on. At the end: jobs acknowledged but never run (lost),
jobs run more than once (by the runner's own record), and the completions that reached a
live subscriber (pub/sub) against those that happened: the rest a socket catches up from its
job's replay stream. Everything stays on 127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray.config import load_settings
from dash_ray.errors import Unavailable
from dash_ray.queues import Durability, EmbeddedRedis, EventHub, JobStore, connect, is_transient
from dash_ray.scheduler import RunnerSpec, queue_specs, with_runner
from dash_ray.scheduler.cluster import Scheduler, init_ray

BACKLOG = 200


class Load:
    """Keeps the queue topped up and samples the count of completed jobs every 0.1 s."""

    def __init__(self, url: str, prefix: str, job_s: float, durability: Durability | None = None) -> None:
        self.url, self.prefix, self.job_s, self.durability = url, prefix, job_s, durability
        self.watch: Any = None  # called with every 10th job's id as it is made
        self.samples: list[tuple[float, int]] = []
        self.ids: list[str] = []
        self.stop = False

    def store(self) -> JobStore:
        return JobStore(connect(self.url), prefix=self.prefix, queues=("sleep",), durability=self.durability)

    async def run(self) -> None:
        store = self.store()
        while not self.stop:
            try:
                counts = await store.counts("sleep")
                hist = await store.control.durations("sleep")  # cumulative (BullMQ's completed set is trimmed)
                self.samples.append((time.monotonic(), sum(int(v) for k, v in hist.items() if k.startswith("le_"))))
                for _ in range(max(0, BACKLOG - counts["waiting"])):
                    self.ids.append((await store.add("sleep", {"userId": "chaos", "durationS": self.job_s})).job.id)
                    if self.watch is not None and len(self.ids) % 10 == 0:  # a sample, heard as a socket would
                        await self.watch(self.ids[-1])
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, Unavailable)):  # (a 503: sent again)
                    raise
                store = self.store()  # Redis is away: try again shortly
            await asyncio.sleep(0.1)

    def rate(self, t0: float, t1: float) -> float:
        inside = [(t, n) for t, n in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def first_completion_after(self, t: float) -> float | None:
        before = max((n for ts, n in self.samples if ts <= t), default=0)
        return next((ts - t for ts, n in self.samples if ts > t and n > before), None)

    def back_to(self, t: float, level: float) -> float | None:
        """Seconds from t until a 1 s window reaches `level` jobs/s."""
        for ts, _n in self.samples:
            if ts > t and self.rate(ts, ts + 1.0) >= level:
                return ts - t
        return None


async def fault_report(load: Load, name: str, t_fault: float, settle_s: float) -> None:
    await asyncio.sleep(settle_s)
    before = load.rate(t_fault - 5, t_fault)
    first = load.first_completion_after(t_fault)
    back = load.back_to(t_fault, 0.8 * before)
    after = load.rate(t_fault + (back or 0), t_fault + (back or 0) + 5)
    print(f"{name:14s} before {before:7.1f} jobs/s   next completion {first if first is not None else float('nan'):6.2f} s"
          f"   back to 80% in {back if back is not None else float('nan'):6.2f} s   after {after:7.1f} jobs/s",
          flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage-s", type=float, default=3.0)
    ap.add_argument("--fsync", choices=["everysec", "always"], default="always")
    ap.add_argument("--job-s", type=float, default=0.02, help="run time of one job")
    ap.add_argument("--sentinel", action="store_true", help="a Sentinel-managed Redis; fault 1: its primary killed")
    ap.add_argument("--wait-replicas", type=int, default=0, help="DASH_REDIS_WAIT_REPLICAS (with --sentinel)")
    ap.add_argument("--gcs", action="store_true", help="GCS fault tolerance; fault 1: the head's GCS killed")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dash-chaos-"))
    server: EmbeddedRedis | None = None
    sentinels = None
    if args.sentinel:
        from dash_ray.testing.sentinel import SentinelSet

        sentinels = SentinelSet(root / "sentinel", replicas=2 if args.wait_replicas else 1).start()
        url = sentinels.url
    else:
        server = EmbeddedRedis(root / "redis", fsync=args.fsync)
        server.start()
        url = server.url
    runs = root / "runs"
    runs.mkdir()
    prefix = f"chaos{uuid.uuid4().hex[:6]}"
    settings = load_settings(key_prefix=prefix, worker_idle_s=600, redis_wait_replicas=args.wait_replicas)
    specs = with_runner(queue_specs(settings, test_queues=True), RunnerSpec(
        "dash_ray.scheduler.sleep:SleepRunner", {"record_dir": str(runs)}))
    cluster = None
    gcs_redis = None
    if args.gcs:
        import subprocess

        from ray.cluster_utils import Cluster

        from dash_ray import runtime
        from dash_ray.scheduler.cluster import NAMESPACE
        from dash_ray.testing import free_port

        gport = free_port()
        gcs_redis = subprocess.Popen(["redis-server", "--port", str(gport), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(root)], stdout=subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # (its own server: up in milliseconds; the head retries besides)
        os.environ["RAY_REDIS_ADDRESS"] = f"127.0.0.1:{gport}"
        runtime.loopback_ray()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "gcs_server_port": free_port(),
            "_system_config": {"gcs_rpc_server_reconnect_timeout_s": 60}})
        cluster.add_node(num_cpus=1, num_gpus=1, resources={"dash_sleep": 5})
        cluster.wait_for_nodes()
        import ray

        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    else:
        init_ray(settings, specs)
    sched = Scheduler(settings, url, [s for s in specs if s.name == "sleep"])
    sched.start()
    load = Load(url, prefix, args.job_s, Durability.of(settings))
    hub = EventHub(url)
    await hub.start(wait_s=10)
    heard: set[str] = set()
    watched: list[str] = []
    keys = load.store().keys

    async def watch(job_id: str) -> None:
        watched.append(job_id)
        await hub.add(keys.channel(job_id), lambda _c, data, j=job_id: heard.add(j) if '"job:completed"' in data
                      else None, confirm=False)

    load.watch = watch
    task = asyncio.create_task(load.run())
    try:
        what = (f"sentinel (replicas {2 if args.wait_replicas else 1}, wait {args.wait_replicas})" if args.sentinel
                else f"GCS fault tolerance, GCS down {args.outage_s}s" if args.gcs
                else f"fsync={args.fsync} outage={args.outage_s}s")
        print(f"{what} job={args.job_s}s, 5 workers, backlog {BACKLOG}", flush=True)
        await asyncio.sleep(10)  # workers warm, steady state
        t_fault = time.monotonic()
        if sentinels is not None:
            await asyncio.to_thread(sentinels.kill_primary)
            await fault_report(load, "primary killed", t_fault, 20)
        elif cluster is not None:
            await asyncio.to_thread(cluster.head_node.kill_gcs_server)
            await asyncio.sleep(args.outage_s)
            await asyncio.to_thread(cluster.head_node.start_gcs_server)
            await fault_report(load, "GCS killed", t_fault, 15 + args.outage_s)
        else:
            assert server is not None
            os.kill(server.pid or 0, signal.SIGKILL)  # our own redis-server
            if server.proc is not None:
                server.proc.wait(10)
            server.proc = None
            await asyncio.sleep(args.outage_s)
            server.start()
            await fault_report(load, "redis outage", t_fault, 15 + args.outage_s)

        busy = await asyncio.to_thread(lambda: sched.stats()["sleep"]["running_jobs"])
        pid = next(iter(busy.values()), None)
        t_fault = time.monotonic()
        if pid:
            os.kill(pid, signal.SIGKILL)  # a worker process our own Ray started
        await fault_report(load, "worker killed", t_fault, 15)
    finally:
        load.stop = True
        await task
    store = load.store()
    deadline = time.monotonic() + 120
    while (await store.counts("sleep"))["waiting"] + (await store.counts("sleep"))["active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    counts = [len((runs / i).read_text().splitlines()) if (runs / i).exists() else 0 for i in load.ids]
    print(f"jobs acknowledged {len(load.ids)}: executed once {counts.count(1)}, more than once {sum(c > 1 for c in counts)}, "
          f"never (lost) {counts.count(0)}   (a job running on the killed worker runs again: at least once)", flush=True)
    ran = {i for i, c in zip(load.ids, counts, strict=True) if c}
    sampled = [j for j in watched if j in ran]
    print(f"completions heard live on pub/sub (every 10th job watched): {sum(j in heard for j in sampled)} of "
          f"{len(sampled)} (the rest a socket catches up from the job's replay stream)", flush=True)
    print(f"median completed per 0.1 s sample: {statistics.median(b[1] - a[1] for a, b in zip(load.samples, load.samples[1:], strict=False)):.1f}")
    await hub.close()
    sched.stop(drain_timeout_s=2)
    if server is not None:
        server.stop()
    if sentinels is not None:
        sentinels.stop()
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    if gcs_redis is not None:
        gcs_redis.kill()


if __name__ == "__main__":
    asyncio.run(main())
