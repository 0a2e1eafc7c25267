"""ETA error on a mixed backlog: predicted vs actual start and finish of each waiting job.

    python bench/eta_bench.py [--jobs 30] [--workers 5] [--rounds 3]

The `sleep` queue (5 workers, a local Ray, the embedded Redis) first runs a few jobs to measure
its cost, then gets `--jobs` jobs of mixed lengths (0.3-1.5 s) at once. Right after the
submits, each waiting job's view gives `etaS` (until it starts) and `finishEtaS`. Once all ran,
the actual start and finish times come from the jobs' events. It prints, per round, the median
and p90 of the absolute error, in seconds and relative to the actual wait (floored at 1 s).
Everything stays on 127.0.0.1; the run stops by itself.
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

MIXED = [0.3, 1.2, 0.6, 0.9, 0.4, 1.5]


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.9 * len(xs)) - 1)]


async def one_round(store: JobStore, jobs: int) -> dict[str, float]:
    ids = [(await store.add("sleep", {"userId": "bench", "durationS": MIXED[i % len(MIXED)]})).job.id
           for i in range(jobs)]
    t0 = time.time()
    pred = {}
    for job_id in ids:
        asked = time.time()
        v = await store.get(job_id)
        at = (asked + time.time()) / 2  # each estimate counts from when it was made
        if v.status == "waiting" and v.eta_s is not None and v.finish_eta_s is not None:
            pred[job_id] = (at + v.eta_s, at + v.finish_eta_s)
    while not all([(await store.get(i)).status == "completed" for i in ids]):
        await asyncio.sleep(0.2)
    start_err, finish_err, start_rel = [], [], []
    for job_id, (ps, pf) in pred.items():
        s, f = intervals(await events(store, job_id))[0]
        start_err.append(abs(ps - s))
        finish_err.append(abs(pf - f))
        start_rel.append(abs(ps - s) / max(s - t0, 1.0))
    return {"predicted": len(pred), "start_median_s": statistics.median(start_err), "start_p90_s": p90(start_err),
            "finish_median_s": statistics.median(finish_err), "finish_p90_s": p90(finish_err),
            "start_median_rel": statistics.median(start_rel), "start_p90_rel": p90(start_rel)}


async def run(url: str, prefix: str, args: argparse.Namespace) -> None:
    store = JobStore(connect(url), prefix=prefix, queues=("sleep",))

    async def slots() -> int:  # the queue's standing workers, as its consumer reports them each second
        return int((await store.redis.hget(store.keys.capacity("sleep"), "slots")) or 0)

    async def run_all(durations: list[float]) -> None:
        ids = [(await store.add("sleep", {"userId": "bench", "durationS": d})).job.id for d in durations]
        while not all([(await store.get(i)).status == "completed" for i in ids]):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.2)

    # ETAs count the workers that stand: a worker still starting when the backlog empties is
    # called off, so warm up until all stand, then measure the mixed shapes' costs
    for _ in range(6):
        await run_all([2.0] * args.workers)
        if await slots() >= args.workers:
            break
    await run_all(MIXED[:args.workers])
    for i in range(args.rounds):
        row = await one_round(store, args.jobs)
        print(json.dumps({"round": i + 1, **{k: round(v, 3) for k, v in row.items()}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    prefix = f"eta{uuid.uuid4().hex[:6]}"
    with sleep_queue_rig(args.workers, "dash-eta-") as url:
        sched = start_scheduler(url, prefix, **sleep_settings(args.workers))
        asyncio.run(run(url, prefix, args))
        sched.stop(drain_timeout_s=2)


if __name__ == "__main__":
    main()
