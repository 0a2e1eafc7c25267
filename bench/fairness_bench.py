"""Fair share under a skewed load: one heavy user and nine light ones on one queue, FIFO against
fair share. Prints each class's wait (submit to start) and where the light users' jobs landed
in the start order.

    python bench/fairness_bench.py [--heavy 300] [--light-users 9] [--light-jobs 10] [--job-s 0.05]

The `sleep` queue (5 workers, a local Ray, the embedded Redis). The heavy user submits its jobs
at once; half a second later each light user submits theirs. The same load runs twice, on two
key prefixes: first with fair share off (BullMQ's FIFO within a priority), then on. Everything
stays on 127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray.queues import JobStore, connect
from dash_ray.testing import events, intervals, sleep_queue_rig, sleep_settings, start_scheduler


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[max(0, round(q * len(xs)) - 1)]


async def load(store: JobStore, args: argparse.Namespace) -> dict[str, object]:
    submitted: dict[str, tuple[str, float]] = {}
    for _ in range(args.heavy):
        jid = (await store.add("sleep", {"userId": "heavy", "durationS": args.job_s})).job.id
        submitted[jid] = ("heavy", time.time())
    await asyncio.sleep(0.5)
    for _n in range(args.light_jobs):  # the light users' jobs come interleaved, as users would click
        for u in range(args.light_users):
            jid = (await store.add("sleep", {"userId": f"light{u}", "durationS": args.job_s})).job.id
            submitted[jid] = (f"light{u}", time.time())
    ids = list(submitted)
    while not all([(await store.get(i)).status == "completed" for i in ids]):
        await asyncio.sleep(0.3)
    start = {i: intervals(await events(store, i))[0][0] for i in ids}
    order = sorted(ids, key=start.__getitem__)
    wait = {i: start[i] - submitted[i][1] for i in ids}
    heavy = [wait[i] for i in ids if submitted[i][0] == "heavy"]
    light = [wait[i] for i in ids if submitted[i][0] != "heavy"]
    light_places = [order.index(i) + 1 for i in ids if submitted[i][0] != "heavy"]
    return {"heavy_wait_p50_s": statistics.median(heavy), "heavy_wait_p90_s": pct(heavy, 0.9),
            "light_wait_p50_s": statistics.median(light), "light_wait_p90_s": pct(light, 0.9),
            "light_wait_max_s": max(light), "last_light_start_place": max(light_places),
            "jobs": len(ids), "makespan_s": max(start.values()) - min(start.values())}


async def warm(store: JobStore, workers: int) -> None:
    ids = [(await store.add("sleep", {"userId": "warm", "durationS": 2.0})).job.id for _ in range(workers)]
    while not all([(await store.get(i)).status == "completed" for i in ids]):
        await asyncio.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heavy", type=int, default=300)
    ap.add_argument("--light-users", type=int, default=9)
    ap.add_argument("--light-jobs", type=int, default=10)
    ap.add_argument("--job-s", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=5)
    args = ap.parse_args()
    with sleep_queue_rig(args.workers, "dash-fair-") as url:
        for mode, fair in (("fifo", False), ("fair", True)):
            prefix = f"fair{uuid.uuid4().hex[:6]}"
            sched = start_scheduler(url, prefix, **sleep_settings(args.workers))

            async def go(prefix: str = prefix, fair: bool = fair) -> dict[str, object]:
                store = JobStore(connect(url), prefix=prefix, queues=("sleep",), fair_share=fair)
                await warm(store, args.workers)
                return await load(store, args)

            row = asyncio.run(go())
            print(json.dumps({"mode": mode, **{k: round(v, 3) if isinstance(v, float) else v
                                                for k, v in row.items()}}), flush=True)
            sched.stop(drain_timeout_s=2)


if __name__ == "__main__":
    main()
