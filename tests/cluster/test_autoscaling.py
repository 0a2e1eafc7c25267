"""Autoscaling from backlog with Ray's fake multi-node provider: a generation backlog makes the
autoscaler add a GPU node, real tiny generation runs on it, and once the queue is idle the node
is removed. The sleep queue, served on the head, is not held up while the node boots."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dash_ray.queues import JobStore, connect
from dash_ray.testing import wait_for
from dash_ray.testing.cluster import GPU1, FakeAutoscalingCluster, gpu_nodes
from tests.cluster.conftest import connect as connect_ray

GEN = {"userId": "alice", "prompt": "a fox", "settings": {"steps": 2, "width": 64, "height": 64, "seed": 1}}


@pytest.fixture(scope="module")
def autoscaling() -> Iterator[FakeAutoscalingCluster]:
    """A head with the test queue's slots (and no generation slots), and a 1-GPU node type."""
    import ray

    fake = FakeAutoscalingCluster({"CPU": 2, "GPU": 1, "dash_sleep": 5}, {"gpu1": GPU1}, idle_timeout_minutes=0.1)
    try:
        connect_ray(fake.start())
        yield fake
    finally:
        ray.shutdown()
        fake.stop()


async def test_a_backlog_adds_a_gpu_node_that_runs_it_then_goes_when_idle(
        autoscaling: FakeAutoscalingCluster, redis_url: str, prefix: str, tiny_data_dir: Path,
        tmp_path: Path) -> None:
    from dash_ray.config import load_settings
    from dash_ray.scheduler import RunnerSpec, queue_specs
    from dash_ray.scheduler.cluster import Scheduler

    assert gpu_nodes() == []
    settings = load_settings(key_prefix=prefix, data_dir=tiny_data_dir, torch_threads=1, enable_sleep_queue=True,
                             artifacts_url=str(tmp_path / "artifacts"), worker_idle_s=3, generation_max_workers=2)
    sleeper = RunnerSpec("dash_ray.scheduler.sleep:SleepRunner", {"duration_s": 0.2})
    specs = [s if s.name == "generation" else replace(s, runner=sleeper)
             for s in queue_specs(settings) if s.name in ("generation", "sleep")]
    sched = Scheduler(settings, redis_url, specs)
    sched.start()
    try:
        store = JobStore(connect(redis_url), prefix=prefix, queues=("generation", "sleep"))
        gen = [(await store.add("generation", GEN)).job.id for _ in range(4)]
        sleep = [(await store.add("sleep", {"userId": "bob"})).job.id for _ in range(3)]

        async def finished(ids: list[str]) -> list[Any] | None:
            views = [await store.get(i) for i in ids]
            return views if all(v.status in ("completed", "failed") for v in views) else None

        views = await wait_for(lambda: finished(sleep), 60, interval_s=0.2)
        assert {v.status for v in views} == {"completed"}
        # the head's queue ran while the GPU node was still being added
        assert {(await store.get(i)).status for i in gen} == {"waiting"}

        views = await wait_for(lambda: finished(gen), 300, interval_s=0.5)
        assert {v.status for v in views} == {"completed"}, [v.error for v in views]
        assert all(v.result and v.result.get("images") for v in views)
        added = gpu_nodes()
        assert len(added) == 1  # two workers wanted (generation_max_workers): one node of five slots
        workers = (await asyncio.to_thread(sched.stats))["generation"]["worker_detail"]
        # they ran on the new node (a batch may have left a second worker still starting: it ran nothing)
        ran = [w for w in workers if w["state"] != "pending"]
        assert ran and {w["node"] for w in ran} == set(added)

        async def removed() -> bool:
            return not gpu_nodes()

        await wait_for(removed, 120, interval_s=1.0)  # workers stop after 3 s idle, the node 6 s later
        assert (await asyncio.to_thread(sched.stats))["generation"]["wanted_workers"] == 0
    finally:
        sched.stop(drain_timeout_s=2)
