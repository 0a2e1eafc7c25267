"""Add and consume N no-op jobs through dash_ray.queues and through bare bullmq; print jobs/s and the ratio.

    python bench/queue_bench.py [--jobs 10000] [--in-flight 32] [--consumers 4]

Uses REDIS_URL if set, else an embedded Redis in a temp dir. Only loopback traffic.
dash-ray's path does more per job than bare bullmq: payload validation, an idempotency
reservation, a history index and a `waiting` / `active` / `completed` event each
(pub/sub + replay stream). Bare bullmq's Worker runs its default settings.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bullmq import Queue, Worker

from dash_ray.config import load_settings
from dash_ray.queues import EmbeddedRedis, JobStore, QueueConsumer, connect, started_event


async def bounded(n: int, in_flight: int, make) -> float:  # type: ignore[no-untyped-def]
    """Run make(i) for i < n with at most in_flight awaiting at once; returns seconds."""
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def run_bullmq(url: str, n: int, in_flight: int, concurrency: int) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    queue = Queue("bench", {"connection": url, "prefix": prefix})
    add_s = await bounded(n, in_flight, lambda i: queue.add("noop", {"i": i}, {"removeOnComplete": 1000}))
    done = asyncio.Event()
    count = 0

    async def process(job, token):  # type: ignore[no-untyped-def]
        return None

    def on_completed(*_a):  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    t0 = time.perf_counter()
    worker = Worker("bench", process, {"connection": url, "prefix": prefix, "concurrency": concurrency})
    worker.on("completed", on_completed)
    await done.wait()
    consume_s = time.perf_counter() - t0
    await worker.close()
    await queue.obliterate(force=True)
    await queue.close()
    return {"add_s": add_s, "consume_s": consume_s}


async def run_dash(url: str, n: int, in_flight: int, consumers: int) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    r = connect(url)
    store = JobStore(r, prefix=prefix, queues=("sleep",), keep_completed=1000, user_history_max=100)
    add_s = await bounded(n, in_flight, lambda i: store.add("sleep", {"userId": f"u{i % 50}"}))
    done = 0

    async def loop() -> None:
        nonlocal done
        b = connect(url, blocking=True)
        c = QueueConsumer(r, b, "sleep", store.lifecycle, prefix=prefix)
        jobs: list[Any] = []
        while done < n:
            if not jobs:
                jobs = await c.take(block_s=0.05)
                continue
            job = jobs[0]  # started as a worker starts it: its `active` event
            await store.lifecycle.report(started_event(job.id, job.queue, job.user_id, job.attempt, job.attempts))
            done += 1
            jobs, _lost = await c.complete([(job, None)], fetch_next=1)
        await b.aclose()

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(consumers)))
    consume_s = time.perf_counter() - t0
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=5000)]
    for i in range(0, len(keys), 1000):
        await r.delete(*keys[i : i + 1000])
    await r.aclose()
    return {"add_s": add_s, "consume_s": consume_s}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--in-flight", type=int, default=32, help="adds awaiting at once")
    ap.add_argument("--consumers", type=int, default=4, help="dash-ray consumer loops / bullmq concurrency")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    url = load_settings().resolved_redis_url()
    server = None
    if url is None:
        server = EmbeddedRedis(tempfile.mkdtemp(prefix="dash-bench-"))
        url = server.start()
    try:
        results: dict[str, list[float]] = {"bullmq": [], "dash": []}
        for _ in range(args.rounds):
            for name, fn in (("bullmq", run_bullmq), ("dash", run_dash)):
                r = await fn(url, args.jobs, args.in_flight, args.consumers)
                total = args.jobs / (r["add_s"] + r["consume_s"])
                results[name].append(total)
                print(f"{name:7s} add {args.jobs / r['add_s']:8.0f} jobs/s   consume {args.jobs / r['consume_s']:8.0f} jobs/s"
                      f"   add+consume {total:8.0f} jobs/s")
        b = statistics.median(results["bullmq"])
        d = statistics.median(results["dash"])
        print(f"\njobs={args.jobs} in_flight={args.in_flight} consumers={args.consumers} redis={'embedded' if server else url}")
        print(f"bare bullmq      {b:8.0f} jobs/s (add + consume)")
        print(f"dash_ray.queues  {d:8.0f} jobs/s (add + consume)")
        print(f"ratio dash/bullmq {d / b:.2f}x   (target >= 0.80x)")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
