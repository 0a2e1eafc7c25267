"""Dispatcher: one queue's scheduling policy, as plain async code.

Takes a job only when a worker is free (so priority order holds), hands it to the worker,
and on completion chains straight into the next job on the same worker. Workers are
started while there is a backlog and stopped when idle; Ray's resources cap how many run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from dash_ray.queues import ActiveJob, EventHub, LockLost, QueueConsumer
from dash_ray.scheduler.pool import Slot, WorkerPool
from dash_ray.scheduler.runner import JobContext

__all__ = ["Dispatcher", "model_of"]

log = logging.getLogger(__name__)


def model_of(data: dict[str, Any]) -> str | None:
    """The model a payload needs (for model affinity): settings.model, settings.baseModel or model."""
    settings = data.get("settings")
    if isinstance(settings, dict):
        name = settings.get("model") or settings.get("baseModel")
        if name:
            return str(name)
    name = data.get("model")
    return str(name) if name else None


class Dispatcher:
    """Moves one queue's jobs from Redis to its worker pool and back."""

    def __init__(self, consumer: QueueConsumer, pool: WorkerPool, *, hub: EventHub | None = None,
                 cancel_channel: str | None = None, idle_keep: int = 0) -> None:
        self.consumer = consumer
        self.pool = pool
        self.hub = hub
        self.cancel_channel = cancel_channel
        self.idle_keep = idle_keep
        self.running: dict[str, Slot] = {}
        self._early_cancels: set[str] = set()
        self.stopping = False
        self.stopped = asyncio.Event()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.failed = 0
        self.started_at = time.time()

    @property
    def queue(self) -> str:
        """The queue this dispatcher serves."""
        return self.consumer.name

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """Serve the queue until `drain()`."""
        self.consumer.start_maintenance()
        if self.hub is not None and self.cancel_channel:
            await self.hub.start()
            await self.hub.add(self.cancel_channel, self._on_cancel)
        house = asyncio.create_task(self._housekeeping())
        log.info("dispatcher for %s started (consumer %s)", self.queue, self.consumer.id)
        try:
            while not self.stopping:
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("dispatcher step failed on %s", self.queue)
                    await asyncio.sleep(0.5)
        finally:
            house.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await house
            self.stopped.set()

    async def _step(self) -> None:
        self.pool.reap_idle(keep=self.idle_keep)  # here, not in a timer: no race with take_idle
        slot = self.pool.take_idle()
        if slot is None:
            backlog = await self.consumer.backlog()
            pending = self.pool.count("pending")
            if backlog > pending:
                self.pool.spawn(backlog - pending)
            await self.pool.wait_change(0.2 if backlog else 0.5)
            return
        job = await self.consumer.take(block_s=0.5, announce=False)
        if job is None:
            self.pool.unreserve(slot)
            return
        slot = self.pool.prefer(slot, model_of(job.data))
        # The worker publishes the job's `active` event as it starts it.
        task = asyncio.create_task(self._run(slot, job), name=f"job-{job.id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _run(self, slot: Slot, job: ActiveJob | None) -> None:
        alive = True
        models: tuple[str, ...] | None = None
        while job is not None:
            outcome, alive = await self._attempt(slot, job)
            models = tuple(outcome.get("models", ())) or models
            nxt = None
            try:
                if outcome.get("ok"):
                    fetch = alive and not self.stopping
                    nxt = await self.consumer.complete(job, outcome.get("result"), fetch_next=fetch,
                                                       announce_next=False)
                    self.completed += 1
                else:
                    await self.consumer.fail(job, str(outcome.get("error", "failed")),
                                             retry=bool(outcome.get("retry", True)),
                                             cancelled=bool(outcome.get("cancelled")))
                    self.failed += 1
            except LockLost as exc:
                log.warning("%s", exc, extra={"job_id": job.id})
            except Exception:
                log.exception("could not finish job %s", job.id, extra={"job_id": job.id})
            job = nxt
        if alive:
            self.pool.release(slot, models)

    async def _attempt(self, slot: Slot, job: ActiveJob) -> tuple[dict[str, Any], bool]:
        if job.deferred_failure:
            return {"ok": False, "retry": False, "error": job.deferred_failure}, True
        self.running[job.id] = slot
        ctx = JobContext(id=job.id, queue=job.queue, data=job.data, attempt=job.attempt,
                         attempts=job.attempts, user_id=job.user_id,
                         cancelled=job.cancel_requested or job.id in self._early_cancels)
        self._early_cancels.discard(job.id)
        try:
            return await slot.handle.run.remote(ctx.to_dict()), True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker actor died (killed, OOM, node lost)
            log.warning("worker %d died running job %s: %s", slot.id, job.id, type(exc).__name__,
                        extra={"job_id": job.id})
            self.pool.discard(slot)
            return {"ok": False, "retry": True, "error": f"worker died: {type(exc).__name__}"}, False
        finally:
            self.running.pop(job.id, None)

    def _on_cancel(self, _channel: str, job_id: str) -> None:
        slot = self.running.get(job_id)
        if slot is not None:
            log.info("cancelling running job %s", job_id, extra={"job_id": job_id})
            slot.handle.cancel.remote(job_id)
        elif job_id in self.consumer.held:  # taken, not yet handed to its worker
            self._early_cancels.add(job_id)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.pool.count("pending") and await self.consumer.backlog() == 0:
                    self.pool.drop_pending(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed on %s", self.queue)

    # ------------------------------------------------------------------ lifecycle
    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Stop taking jobs; wait up to timeout_s for running ones. Waiting jobs stay in Redis."""
        self.stopping = True
        tasks = list(self._job_tasks)
        done, pending = (set(), set())
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), 2.0)
        return {"finished": len(done), "unfinished": len(pending)}

    async def close(self) -> None:
        """Release everything (workers, connections)."""
        self.stopping = True
        self.pool.shutdown()
        await self.consumer.close()
        if self.hub is not None:
            await self.hub.close()

    def stats(self) -> dict[str, Any]:
        """Counters and the pool's workers by state."""
        return {"queue": self.queue, "running": len(self.running), "completed": self.completed,
                "failed": self.failed, "workers": self.pool.stats(), "worker_detail": self.pool.detail(),
                "running_jobs": {job_id: slot.pid for job_id, slot in self.running.items()},
                "stopping": self.stopping, "pid": os.getpid()}
