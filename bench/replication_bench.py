"""What acknowledged replication costs a submit: DASH_REDIS_WAIT_REPLICAS=1 against 0.

    python bench/replication_bench.py [--jobs 1000] [--concurrency 64]

A primary, one replica and three sentinels of this machine's `redis-server` on loopback
(dash_ray/testing/sentinel.py); the job store connected through the sentinels. For each
setting: submits one at a time (latency p50 / p99) and `--concurrency` at once (jobs/s), the
creates grouped on one connection as the gateway sends them. Everything stays on 127.0.0.1;
the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray.queues import Durability, JobStore, connect
from dash_ray.testing.sentinel import SentinelSet


async def measure(url: str, replicas: int, jobs: int, concurrency: int) -> tuple[float, float, float]:
    redis = connect(url)
    store = JobStore(redis, prefix=f"rb{uuid.uuid4().hex[:6]}", queues=("sleep",), durability=Durability(replicas))
    try:
        lat = []
        for _ in range(jobs // 4):
            t0 = time.perf_counter()
            await store.add("sleep", {"userId": "bench", "durationS": 0})
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        left = [jobs]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await store.add("sleep", {"userId": "bench", "durationS": 0})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = jobs / (time.perf_counter() - t0)
        return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], rate
    finally:
        await store.aclose()
        await redis.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with SentinelSet(Path(tempfile.mkdtemp(prefix="dash-repl-"))) as sentinels:
        print(f"primary + 1 replica + 3 sentinels on loopback; {args.jobs} submits, {args.concurrency} at once", flush=True)
        for r in range(args.rounds):
            for replicas in (0, 1):
                p50, p99, rate = await measure(sentinels.url, replicas, args.jobs, args.concurrency)
                print(f"round {r + 1}  DASH_REDIS_WAIT_REPLICAS={replicas}:  one at a time p50 {p50:5.2f} ms  "
                      f"p99 {p99:5.2f} ms   {args.concurrency} at once {rate:7.0f} jobs/s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
