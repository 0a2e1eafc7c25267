"""Autoscaling from backlog on Ray's fake multi-node provider: how long from a backlog to the
first job on a new GPU node, and from an idle queue to that node's removal.

    python bench/scale_bench.py [--jobs 8] [--max-workers 2] [--runner generation|sleep] [--rounds 2]

A head without GPU slots (RAY_FAKE_CLUSTER=1 `ray start --head --autoscaling-config`, on
127.0.0.1) and cluster.yaml's 1-GPU node type, launched and removed by Ray's autoscaler
(idle_timeout_minutes 0.1, i.e. 6 s). Each round submits `--jobs` generation jobs (real tiny
diffusers generation, 64 px, 2 steps; or the sleep runner, 0.5 s) and prints:
  node_up_s     backlog submitted -> the GPU node joined the cluster
  first_job_s   backlog submitted -> the first job started on it (includes the worker's start:
                importing torch and loading the pipeline)
  drained_s     backlog submitted -> every job completed
  node_down_s   last job completed -> the node was removed (workers stop after
                DASH_WORKER_IDLE_S=3, then the autoscaler's idle timeout)
Processes are stopped by PID; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dash_ray import runtime
from dash_ray.config import load_settings
from dash_ray.queues import EmbeddedRedis, JobStore, connect
from dash_ray.scheduler import RunnerSpec, queue_specs
from dash_ray.scheduler.cluster import NAMESPACE, Scheduler
from dash_ray.testing.cluster import GPU1, FakeAutoscalingCluster, gpu_nodes

GEN = {"userId": "bench", "prompt": "a fox", "settings": {"steps": 2, "width": 64, "height": 64, "seed": 1}}


async def one_round(store: JobStore, jobs: int, timeout_s: float = 600) -> dict[str, float]:
    t0 = time.monotonic()
    ids = [(await store.add("generation", GEN)).job.id for _ in range(jobs)]
    node_up = first = None
    while True:
        now = time.monotonic() - t0
        assert now < timeout_s, "the backlog did not drain"
        if node_up is None and gpu_nodes():
            node_up = now
        views = [await store.get(i) for i in ids]
        if first is None and any(v.status != "waiting" for v in views):
            first = now
        if all(v.status in ("completed", "failed") for v in views):
            assert {v.status for v in views} == {"completed"}, [v.error for v in views]
            drained = now
            break
        await asyncio.sleep(0.1)
    t1 = time.monotonic()
    while gpu_nodes():
        assert time.monotonic() - t1 < timeout_s, "the idle node was not removed"
        await asyncio.sleep(0.2)
    return {"node_up_s": node_up or 0.0, "first_job_s": first or 0.0, "drained_s": drained,
            "node_down_s": time.monotonic() - t1}


async def all_rounds(url: str, prefix: str, rounds: int, jobs: int) -> list[dict[str, float]]:
    store = JobStore(connect(url), prefix=prefix, queues=("generation",))
    rows = []
    for i in range(rounds):
        rows.append(await one_round(store, jobs))
        print(json.dumps({"round": i + 1, **{k: round(v, 2) for k, v in rows[-1].items()}}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--max-workers", type=int, default=2)
    ap.add_argument("--runner", choices=("generation", "sleep"), default="generation")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import ray

    runtime.setup()
    root = Path(tempfile.mkdtemp(prefix="dash-scale-"))
    if args.runner == "generation":
        from dash_ray.services import TINY_SD
        from dash_ray.workers.tiny import ensure_tiny

        ensure_tiny(TINY_SD, root / "models")
    redis = EmbeddedRedis(root / "redis")
    fake = FakeAutoscalingCluster({"CPU": 2}, {"gpu1": GPU1}, idle_timeout_minutes=0.1)
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    try:
        url = redis.start()
        runtime.loopback_ray()
        ray.init(address=fake.start(), namespace=NAMESPACE, log_to_driver=False)
        settings = load_settings(key_prefix=prefix, data_dir=root, torch_threads=1, worker_idle_s=3,
                                 generation_max_workers=args.max_workers)
        spec = next(s for s in queue_specs(settings) if s.name == "generation")
        if args.runner == "sleep":
            spec = replace(spec, runner=RunnerSpec("dash_ray.scheduler.sleep:SleepRunner", {"duration_s": 0.5}))
        sched = Scheduler(settings, url, [spec])
        sched.start()
        rows = asyncio.run(all_rounds(url, prefix, args.rounds, args.jobs))
        print(json.dumps({"runner": args.runner, "jobs": args.jobs, "max_workers": args.max_workers,
                          **{f"median_{k}": round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}}))
        sched.stop(drain_timeout_s=2)
    finally:
        ray.shutdown()
        fake.stop()
        redis.stop()


if __name__ == "__main__":
    main()
