"""What one job costs Redis, for the capacity model (docs/capacity.md).

    python bench/capacity_bench.py [--jobs 2000] [--progress 10]

Runs `--jobs` jobs through their whole life on the Redis the settings name (embedded when none):
a submit (the gateway's create), a take, `--progress` progress events (what a worker reports),
a completion, as dash-ray's own code does them (no Ray: the Redis side only), in batches of 50
jobs at a time. Reads Redis's own counters before and after (`INFO commandstats`, `INFO stats`,
`INFO cpu`, `INFO memory`) and prints per job: commands (by command), bytes in and out, Redis CPU
(µs, the server's own), and the memory a finished job keeps until its retention ends. Then what
that means for one Redis primary on this machine. Everything stays on 127.0.0.1; the run stops
by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray.config import load_settings
from dash_ray.models.events import JobProgressEvent
from dash_ray.queues import EmbeddedRedis, JobStore, QueueConsumer, connect


async def snapshot(redis: Any) -> dict[str, Any]:
    stats = await redis.info("commandstats")
    info = await redis.info()
    return {"cmd": {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()},
            "in": int(info["total_net_input_bytes"]), "out": int(info["total_net_output_bytes"]),
            "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "mem": int(info["used_memory"])}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--progress", type=int, default=10, help="progress events per job")
    args = ap.parse_args()
    settings = load_settings()
    url = settings.resolved_redis_url()
    server = None
    if not url:
        server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="dash-cap-")) / "redis", server=settings.redis_server)
        server.start()
        url = server.url
    prefix = f"cap{uuid.uuid4().hex[:6]}"
    redis, blocking = connect(url), connect(url, blocking=True)
    store = JobStore(redis, prefix=prefix, queues=("sleep",))
    consumer = QueueConsumer(redis, blocking, "sleep", store.lifecycle, prefix=prefix)
    try:
        before = await snapshot(redis)
        t0 = time.perf_counter()
        done = 0
        while done < args.jobs:
            n = min(50, args.jobs - done)
            await asyncio.gather(*(store.add("sleep", {"userId": f"u{i % 20}", "durationS": 0}) for i in range(n)))
            jobs = await consumer.take(up_to=n)
            for step in range(1, args.progress + 1):
                await asyncio.gather(*(store.lifecycle.report(JobProgressEvent(
                    job_id=j.id, queue="sleep", user_id=j.user_id, status="active", progress=100 * step // (args.progress + 1),
                    message=f"step {step}"), token=j.token) for j in jobs))
            await consumer.complete([(j, {"ok": 1}) for j in jobs])
            done += len(jobs)
        wall = time.perf_counter() - t0
        after = await snapshot(redis)
    finally:
        for t in consumer.locks.tasks:
            t.cancel()
        await store.aclose()
        await redis.aclose()
        await blocking.aclose()
        if server is not None:
            server.stop()
    n = args.jobs
    cmds = {k: (after["cmd"][k][0] - before["cmd"].get(k, (0, 0))[0], after["cmd"][k][1] - before["cmd"].get(k, (0, 0))[1])
            for k in after["cmd"]}
    cmds = {k: v for k, v in cmds.items() if v[0] > 0 and k not in ("info",)}
    total_calls = sum(c for c, _ in cmds.values())
    total_usec = sum(u for _, u in cmds.values())
    cpu_us = (after["cpu"] - before["cpu"]) * 1e6 / n
    print(f"{n} jobs, {args.progress} progress events each, {wall:.1f} s ({n / wall:.0f} jobs/s through this one client)")
    print(f"per job: {total_calls / n:.1f} commands ({total_usec / n:.0f} µs inside them), "
          f"{(after['in'] - before['in']) / n:.0f} B in, {(after['out'] - before['out']) / n:.0f} B out, "
          f"Redis CPU {cpu_us:.0f} µs, memory kept {(after['mem'] - before['mem']) / n:.0f} B")
    for k, (calls, usec) in sorted(cmds.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {k:22s} {calls / n:6.2f} calls/job  {usec / n:7.1f} µs/job")
    per_s = 1e6 / cpu_us if cpu_us else float("inf")
    print(f"one Redis core at 100%: about {per_s:.0f} such jobs/s (this machine)")


if __name__ == "__main__":
    asyncio.run(main())
