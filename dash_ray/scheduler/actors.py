"""Thin Ray actor shells around ConsumerService and WorkerCore."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray

from dash_ray import runtime
from dash_ray.config import Settings
from dash_ray.scheduler.contract import BatchReply
from dash_ray.scheduler.demand import DemandLedger
from dash_ray.scheduler.resources import QueueSpec
from dash_ray.scheduler.runner import JobContext, RunnerSpec
from dash_ray.scheduler.service import ConsumerService
from dash_ray.scheduler.worker import WorkerCore

__all__ = ["ConsumerActor", "DemandActor", "WorkerActor"]


@ray.remote(concurrency_groups={"control": 2}, enable_task_events=False)  # type: ignore[call-overload]
class WorkerActor:
    """A GPU worker: one job at a time; `cancel` and `info` run in their own concurrency group
    (a thread of their own), so they land while `run` runs. Ray's per-task event reports are off:
    a job's own events are in Redis, and they cost the GCS a message per job."""

    def __init__(self, queue: str, settings: Settings, spec: RunnerSpec, redis_url: str) -> None:
        runtime.setup()
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
        self.core = WorkerCore(queue, settings, spec, redis_url, gpu_fraction=share)

    def ready(self, preload: list[str] | None = None) -> dict[str, Any]:
        """Build the runner and preload these models; the worker's info (with its cold start)."""
        info = self.core.load(preload)
        ctx = ray.get_runtime_context()
        info["resources"] = ctx.get_assigned_resources()
        info["node"] = ctx.get_node_id()
        return info

    def run(self, jobs: list[JobContext], budget_s: float = 0.0, together: bool = False) -> BatchReply:
        """Run a batch of jobs (usually one; `together`: in one pass); see WorkerCore.run_batch."""
        return self.core.run_batch(jobs, budget_s, together)

    @ray.method(concurrency_group="control")
    def cancel(self, job_id: str, requeue: bool = False) -> bool:
        return self.core.cancel(job_id, requeue=requeue)

    @ray.method(concurrency_group="control")
    def info(self) -> dict[str, Any]:
        return self.core.info()


@ray.remote(num_cpus=0, max_restarts=-1)
class ConsumerActor:
    """One queue's consumer; Ray restarts it if it dies, and it starts serving again by itself."""

    def __init__(self, spec: QueueSpec, settings: Settings, redis_url: str, demand: Any = None) -> None:
        runtime.setup()
        self.service = ConsumerService(spec, settings, redis_url, WorkerActor, demand=demand)
        self._task = asyncio.get_event_loop().create_task(self.service.run())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The serving loop ended: fine after a drain; otherwise exit, so that Ray restarts the actor
        (a consumer that answers calls but serves nothing would stop its queue silently)."""
        if not self.service.dispatcher.stopping:
            logging.getLogger(__name__).error("consumer of %s stopped unexpectedly; restarting", self.service.spec.name)
            os._exit(1)

    async def ready(self) -> dict[str, Any]:
        return self.service.stats()

    async def stats(self) -> dict[str, Any]:
        return self.service.stats()

    async def drain(self, timeout_s: float) -> dict[str, Any]:
        return await self.service.drain(timeout_s)


def _request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


@ray.remote(num_cpus=0, max_restarts=-1)
class DemandActor:
    """The cluster's one autoscaler request: the union of every queue's wanted workers."""

    def __init__(self) -> None:
        runtime.setup()
        self.ledger = DemandLedger(_request_resources)

    def report(self, key: str, bundle: dict[str, float], count: int) -> int:
        return self.ledger.report(key, bundle, count)

    def clear(self, prefix: str) -> int:
        return self.ledger.clear(prefix)

    def bundles(self) -> list[dict[str, float]]:
        return self.ledger.bundles()
