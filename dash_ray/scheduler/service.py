"""ConsumerService: wires a queue's consumer, worker pool and dispatcher to Redis and Ray."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import ray

from dash_ray import tracing
from dash_ray.config import Settings
from dash_ray.queues import Durability, EventHub, Keys, Lifecycle, QueueConsumer, Retention, connect
from dash_ray.queues.ledger import Budgets, Ledger, default_budgets
from dash_ray.queues.shares import GpuShares
from dash_ray.scheduler.dispatcher import Dispatcher
from dash_ray.scheduler.pool import WorkerPool
from dash_ray.scheduler.preempt import Arbitration
from dash_ray.scheduler.resources import QueueSpec

__all__ = ["ConsumerService"]

log = logging.getLogger(__name__)


def arbitration(settings: Settings, queue: str) -> Arbitration:
    """A queue's part in GPU arbitration, from the settings (DASH_PREEMPTIBLE_QUEUES, ...)."""
    return Arbitration(
        preemptible=queue in settings.preemptible_queues and settings.preempt_after_s > 0,
        yields_to=tuple(q for q in settings.preempt_for if q != queue),
        peers=tuple(q for q in settings.queue_names if q != queue),
        after_s=settings.preempt_after_s, max_preemptions=settings.max_preemptions,
    )


class ConsumerService:
    """Everything one consumer actor runs; `worker_cls` is the Ray actor class of its workers."""

    def __init__(self, spec: QueueSpec, settings: Settings, redis_url: str, worker_cls: Any,
                 demand: Any = None) -> None:
        """`demand`: the DemandActor's handle, told how many workers this queue wants (autoscaling)."""
        self.spec = spec
        tracing.configure(f"dash-ray-consumer-{spec.name}", settings)
        keys = Keys(settings.key_prefix)
        redis = connect(redis_url, name=f"dash:consumer:{spec.name}")
        worker = f"dash-{socket.gethostname()}-{os.getpid()}"
        blocking = connect(redis_url, blocking=True, name=keys.worker_client(spec.name, worker))
        consumer = QueueConsumer(
            redis, blocking, spec.name, Lifecycle(redis, keys, Retention.of(settings), Durability.of(settings)),
            prefix=settings.key_prefix,
            lock_duration_s=settings.lock_duration_s, stalled_interval_s=settings.stalled_interval_s,
            max_stalled_count=settings.max_stalled_count,
            consumer_id=f"{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        )
        gpu_fraction = float(spec.actor_options().get("num_gpus") or 0.0)
        if gpu_fraction > 0:  # GPU shares: what a user's running jobs may hold at once (queues/shares.py)
            consumer.shares = GpuShares(redis, keys, spec.name, keys.bull(spec.name, ""), gpu_fraction,
                                        Budgets(redis, keys, *default_budgets(settings)), consumer.lifecycle)
        options = spec.actor_options()
        worker_settings = settings.for_workers()  # no secret of the gateway's reaches a GPU node

        def factory() -> Any:
            sized = dict(options)
            if sized.get("num_gpus"):  # the measured peaks may make the next worker's slot smaller
                sized["num_gpus"] = self.dispatcher.worker_fraction() or sized["num_gpus"]
            return worker_cls.options(**sized).remote(spec.name, worker_settings, spec.runner, redis_url)

        def kill(handle: Any) -> None:
            ray.kill(handle, no_restart=True)

        pool = WorkerPool(factory, kill, idle_s=settings.worker_idle_s, max_pending=settings.max_pending_workers,
                          max_size=spec.max_workers, min_workers=spec.min_workers)
        want = None
        if demand is not None:
            key, bundle = f"{settings.key_prefix}/{spec.name}", spec.bundle()

            async def want(count: int) -> None:
                await demand.report.remote(key, bundle, count)

        self.dispatcher = Dispatcher(consumer, pool, hub=EventHub(redis_url),
                                     cancel_channel=keys.cancel_channel, batch_budget_s=settings.batch_budget_s,
                                     max_batch=settings.max_batch, timeout_s=spec.timeout_s,
                                     cancel_grace_s=settings.cancel_grace_s,
                                     max_failures=settings.worker_max_failures,
                                     heartbeat_s=settings.worker_heartbeat_s,
                                     heartbeat_timeout_s=settings.worker_heartbeat_timeout_s,
                                     want_workers=want, max_workers=spec.max_workers,
                                     arbitration=arbitration(settings, spec.name),
                                     gpu_fraction=gpu_fraction,
                                     batch_rows=spec.max_batch, batch_window_s=settings.batch_window_s,
                                     ledger=Ledger(redis, keys, half_life_s=settings.fair_half_life_s,
                                                   per_user=settings.metrics_users > 0)
                                     if settings.ledger else None, aging_after_s=settings.aging_after_s)

    async def run(self) -> None:
        """Serve until drained."""
        try:
            await self.dispatcher.run()
        except Exception:
            log.exception("consumer of %s stopped", self.spec.name)
            raise

    async def drain(self, timeout_s: float) -> dict[str, Any]:
        """Stop taking jobs, let running ones finish (up to timeout_s), then release the workers."""
        out = await self.dispatcher.drain(timeout_s)
        await self.dispatcher.close()
        return {"queue": self.spec.name, **out}

    def stats(self) -> dict[str, Any]:
        """The dispatcher's counters."""
        return self.dispatcher.stats()
