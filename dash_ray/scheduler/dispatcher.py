"""Dispatcher: one queue's scheduling loop, as plain async code.

Takes a job only when a worker is free (so priority order holds), hands it to the worker,
and on completion chains straight into the next job on the same worker. Jobs measured to be
short go to a worker a few per Ray call (see `Measurements.batch_size`). Workers are started
while there is a backlog and stopped when idle; Ray's resources cap how many run.

The loop owns only that; its collaborators own the rest, each in its own module:

- `Handoff` (handoff.py): one Ray call with a batch, and an outcome for each job even when the
  worker dies;
- `OutcomeWriter` (outcomes.py): the outcomes into Redis, the worker's next jobs back;
- `Watchdog` (watchdog.py): run-time limits, cancel deadlines, heartbeats;
- `Arbiter` (arbiter.py): starvation and preemption across queues;
- `Measurements` (measure.py): batch size, costs for ETAs, memory peaks for GPU sizing;
- `DemandReport` (demand.py): the workers this queue wants, for the autoscaler.

Their periodic work runs on one `Timetable` (timetable.py): both loops, the dispatcher's and
its housekeeping, are `loops.supervised`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dash_ray import tracing
from dash_ray.loops import Backoff, supervised
from dash_ray.models.queues import no_model, queue_def
from dash_ray.queues import ActiveJob, EventHub, QueueConsumer, is_transient
from dash_ray.queues.ledger import Charge, Ledger
from dash_ray.scheduler.arbiter import Arbiter
from dash_ray.scheduler.demand import DemandReport
from dash_ray.scheduler.handoff import Handoff
from dash_ray.scheduler.measure import Measurements
from dash_ray.scheduler.outcomes import OutcomeWriter
from dash_ray.scheduler.pool import Slot, WorkerPool
from dash_ray.scheduler.preempt import Arbitration
from dash_ray.scheduler.timetable import Timetable
from dash_ray.scheduler.watchdog import Watchdog

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

MAX_LEAD_S = 30.0  # a delayed job counts as demand this long before it is due, at most
TICK_S = 0.5  # the housekeeping timetable's tick
UPKEEP_S = 1.0  # capacity board, adoption, autoscaler demand, arbitration
PRUNE_S = 30.0  # fair-share clocks that no longer matter go


class Dispatcher:
    """Moves one queue's jobs from Redis to its worker pool and back."""

    def __init__(self, consumer: QueueConsumer, pool: WorkerPool, *, hub: EventHub | None = None,
                 cancel_channel: str | None = None, batch_budget_s: float = 0.02, max_batch: int = 8,
                 timeout_s: float = 600.0, cancel_grace_s: float = 3.0, max_failures: int = 3,
                 heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 30.0,
                 want_workers: Callable[[int], Awaitable[None]] | None = None, max_workers: int = 64,
                 want_refresh_s: float = 30.0, arbitration: Arbitration | None = None,
                 gpu_fraction: float = 0.0, batch_rows: int = 1, batch_window_s: float = 0.05,
                 ledger: Ledger | None = None, aging_after_s: float = 0.0) -> None:
        self.consumer = consumer
        self.ledger = ledger  # where each attempt's use is charged (None: nowhere)
        self.aging_after_s = aging_after_s  # a waiting priority-3 job this old moves up (0: never)
        self._charging: set[asyncio.Task[None]] = set()
        self.pool = pool
        self.hub = hub
        self.cancel_channel = cancel_channel
        self.qdef = queue_def(consumer.name)
        self.batch_of = self.qdef.batch_of if batch_rows > 1 and self.qdef.batch is not None else None
        if self.batch_of is not None:  # compatible jobs run together
            consumer.batch_of = self.batch_of
        else:
            batch_rows = 1
        self.book = Measurements(consumer.name, batch_budget_s=batch_budget_s, max_batch=max_batch,
                                 gpu_fraction=gpu_fraction, batch_rows=batch_rows)
        self.batch_window_s = batch_window_s
        self.watchdog = Watchdog(pool.kill, cancel_grace_s=cancel_grace_s, heartbeat_timeout_s=heartbeat_timeout_s)
        self.watchdog.overdue = self.overdue
        self.arbiter = Arbiter(consumer.name, consumer.board, arbitration)
        self.demand = DemandReport(consumer.name, want_workers, max_workers=max_workers, refresh_s=want_refresh_s)
        self.handoff = Handoff(consumer, pool, self.watchdog, timeout_s=timeout_s, batch_budget_s=batch_budget_s)
        self.outcomes = OutcomeWriter(consumer, self.book, self.arbiter, max_failures=max_failures)
        self.timetable = Timetable(TICK_S, name=consumer.name)
        self.timetable.every(TICK_S, "watchdog", self.watchdog.watch)
        self.timetable.every(heartbeat_s, "heartbeat", self.watchdog.heartbeat)
        self.timetable.every(UPKEEP_S, "housekeeping", self._upkeep)
        self.timetable.every(PRUNE_S, "fair-share pruning", self.consumer.adoption.prune_fair)
        self.running = self.watchdog.running  # job id -> the worker running it
        self.stopping = False
        self.stopped = asyncio.Event()
        self._job_tasks: set[asyncio.Task[None]] = set()

    @property
    def queue(self) -> str:
        """The queue this dispatcher serves."""
        return self.consumer.name

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Serve the queue until `drain()`."""
        self.consumer.start_maintenance()
        if self.hub is not None and self.cancel_channel:
            await self.hub.start()
            await self.hub.add(self.cancel_channel, self.on_cancel, confirm=False)
        house = asyncio.create_task(supervised(f"housekeeping of {self.queue}", self.timetable.tick, logger=log),
                                    name=f"housekeeping-{self.queue}")
        log.info("dispatcher for %s started (consumer %s)", self.queue, self.consumer.id)
        try:
            await supervised(f"dispatcher of {self.queue}", self._step, stop=lambda: self.stopping,
                             backoff=Backoff(), transient=is_transient, logger=log)
        finally:
            house.cancel()
            self.watchdog.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await house
            self.stopped.set()

    async def _step(self) -> None:
        # here, not in a timer: no race with take_idle (which holds an idle worker while it
        # waits for a job). Idle workers all go at once while another queue waits for their GPU.
        yielding = self.arbiter.yield_idle
        self.pool.reap_idle(0.0 if yielding else None, keep_warm=not yielding)
        slot = self.pool.take_idle()
        if slot is None:
            # Delayed jobs about to be due count: with no worker left nothing would take them (a
            # take is what promotes them), and one started now is ready about when they are due.
            backlog = await self.consumer.backlog(ahead_s=self.lead_s())
            pending = self.pool.count("pending")
            if backlog > pending and not self.arbiter.peers_starved:
                self.pool.starter.spawn(backlog - pending, preload=await self.wanted_models())
            await self.pool.wait_change(0.2 if backlog else 0.5)
            return
        try:
            jobs = await self.consumer.take(block_s=0.5, up_to=self.batch_size())
        except BaseException:
            self.pool.unreserve(slot)  # the worker goes back, whatever failed
            raise
        if not jobs:
            self.pool.unreserve(slot)
            return
        for name in self.qdef.affinity(jobs[0].data):  # a worker holding its adapter, else its model
            slot = self.pool.prefer(slot, name)
            if name in slot.models:
                break
        # The take published the first job's `active` event; the worker publishes the others'.
        task = asyncio.create_task(self._serve(slot, jobs), name=f"job-{jobs[0].id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _company(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        """A batch that is not full, of a job submitted less than the batch window ago: wait out the
        window for compatible jobs submitted right after it (a burst), then take them. A job that
        waited longer starts at once; no job waits past the window from its submission."""
        head = jobs[0]
        batch_of = self.batch_of
        assert batch_of is not None
        if head.batch_closed or self.batch_window_s <= 0:  # the job behind it cannot join, or it is full
            return []
        with_head = sum((batch_of(j.data) or ("", 1))[1] for j in jobs[1:])  # rows taken with the head
        # the submit time is the gateway's clock: never more than one window, however far it is ahead
        left = min(head.created_at + self.batch_window_s - time.time(), self.batch_window_s)
        if left <= 0:
            return []
        await asyncio.sleep(left)
        try:
            return await self.consumer.take_batch(head, self.batch_size(), with_head)
        except Exception:
            log.warning("could not take company for job %s", head.id, exc_info=True)
            return []

    def on_cancel(self, channel: str, job_id: str) -> None:
        """The one cancel notification: the job's worker is told (`Watchdog.on_cancel`); a member
        of a batched pass ends `cancelled` at once, while the others run on."""
        self.watchdog.on_cancel(channel, job_id)
        if job_id in getattr(self.consumer, "held", {}) and job_id not in self.handoff.active:
            self.handoff.cancelled_early[job_id] = time.monotonic()  # taken, not on a worker yet: it stops as it starts
        job = self.handoff.detach(job_id)
        if job is not None:
            self._settle_now(self.outcomes.cancelled(job), job_id)

    def overdue(self, job_id: str, why: str) -> bool:
        """A member of a batched pass past its own time limit: it alone fails (retried per its
        attempts) and its rows are dropped, while the others run on; the worker is not killed."""
        slot = self.running.get(job_id)
        job = self.handoff.detach(job_id)
        if job is None or slot is None:
            return False
        log.warning("job %s: %s; ending it alone, its batch runs on", job_id, why, extra={"job_id": job_id})
        slot.handle.cancel.remote(job_id)
        self._settle_now(self.outcomes.timed_out(job, why), job_id)
        return True

    def _settle_now(self, write: Any, job_id: str) -> None:
        task = asyncio.create_task(write, name=f"settle-{job_id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def wanted_models(self, look: int = 8, most: int = 2) -> list[str]:
        """The models the next waiting jobs need (a new worker loads them before its first job);
        "" stands for the deployment's default model."""
        if self.qdef.model_of is no_model:
            return []
        try:
            models = [self.qdef.model_of(d) for d in await self.consumer.peek(look)]
        except Exception:
            log.debug("could not read the waiting jobs' models", exc_info=True)
            return []
        return list(dict.fromkeys(m or "" for m in models))[:most]  # "": the default model

    def lead_s(self) -> float:
        """How long before its due time a delayed job (a later start, a retry's backoff) counts
        as demand for a worker: about the time a new worker takes to be ready."""
        return min(self.pool.starter.start_s, MAX_LEAD_S)

    def batch_size(self) -> int:
        """How many jobs to hand a worker in one Ray call (`Measurements.batch_size`)."""
        return self.book.batch_size()

    def worker_fraction(self) -> float:
        """The GPU share the queue's next workers ask for (`Measurements.worker_fraction`)."""
        return self.book.worker_fraction()

    async def _serve(self, slot: Slot, jobs: list[ActiveJob]) -> None:
        """One worker's jobs, round after round, until it fetches no more; then the worker goes
        back to the pool (or is replaced: its jobs kept failing, or one yielded its GPU)."""
        alive = True
        models: tuple[str, ...] | None = None
        try:
            if self.batch_of is not None:  # here, in the job's task: the loop goes on serving meanwhile
                jobs += await self._company(jobs)
            while jobs:
                jobs = await self.consumer.resolve_inputs(jobs)  # a flow's `job://` inputs, from its children
                if not jobs:
                    break
                t0 = time.monotonic()
                began = time.time() if tracing.tracer() is not None else 0.0
                if began:  # each job's wait, then its run handed to the worker under it
                    for job in jobs:
                        job.trace = self._traced(job, began)
                outcomes, models_now, alive = await self.handoff.run(slot, jobs)
                ran_at = time.time() if began else 0.0
                self._charge(slot, jobs, outcomes, time.monotonic() - t0)
                models = models_now or models
                jobs, outcomes = self.handoff.take_settled(jobs, outcomes)  # cancelled members: written
                ran, jobs = jobs, await self.outcomes.record(slot, jobs, outcomes, fetch=alive and not self.stopping)
                await self._release(ran)  # (a completion gave its share back as it was written)
                if began:  # handed to the worker and back; then its outcome written
                    written = time.time()
                    for job, outcome in zip(ran, outcomes, strict=False):
                        attrs = {"dash.job_id": job.id, "dash.outcome": outcome.kind, "dash.slot": slot.id}
                        tracing.record(f"dispatch {self.consumer.name}", began, ran_at, job.trace, **attrs)
                        tracing.record(f"write {self.consumer.name}", ran_at, written, job.trace, **attrs)
                # a batching queue's jobs handed over together ran in one pass
                self.book.costed(ran, outcomes, time.monotonic() - t0,
                                 shared=len(ran) > 1 and self.batch_of is not None)
        except Exception:
            log.exception("lost track of %d jobs on worker %d", len(jobs), slot.id)  # their locks expire
        finally:
            if slot.failures >= self.outcomes.max_failures:
                log.warning("worker %d failed %d jobs in a row; replacing it", slot.id, slot.failures)
                self.pool.discard(slot)
            elif slot.retire:
                log.info("worker %d let go: its job yielded the GPU", slot.id)
                self.pool.discard(slot)
            elif alive:
                self.pool.release(slot, models)

    def _traced(self, job: ActiveJob, began: float) -> str | None:
        """A job's trace as it is handed to a worker: its wait (from its submit) recorded under
        the carrier it came with (a job made without one starts a trace here); returns the carrier
        the worker's spans and the dispatch span go under."""
        attrs = {"dash.job_id": job.id, "dash.queue": self.consumer.name, "dash.attempt": job.attempts_made + 1}
        return tracing.record(f"wait {self.consumer.name}", job.created_at or began, began, job.trace, **attrs)

    async def _release(self, jobs: list[ActiveJob]) -> None:
        """The attempts' outcomes are written: their GPU shares are given back (queues/shares.py),
        after their final events (a user never sees more of theirs running than their share); a
        count not given back now is, once their locks are gone (`GpuShares.settle`)."""
        shares = getattr(self.consumer, "shares", None)
        if shares is None:
            return
        try:
            await shares.release(jobs)
        except Exception:
            log.warning("%s: could not give back the GPU shares of %d job(s)", self.queue, len(jobs), exc_info=True)

    def _charge(self, slot: Slot, jobs: list[ActiveJob], outcomes: list[Any], wall_s: float) -> None:
        """Charge a pass's attempts to their owners (queues/ledger.py), in the background: the GPU
        share its worker held x the seconds each ran (a batch's pass split between its jobs; an
        attempt killed without a reply: the pass's wall time). Not charged: a job never started,
        one whose worker died under it or was stopped by a shutdown (counted `lost`)."""
        if self.ledger is None:
            return
        shared = len(jobs) > 1 and self.batch_of is not None
        gpu = float(slot.resources.get("GPU", 0.0))
        charges = []
        # a job's worth of work, for fair share's memory: the queue's mean run time, at least 1 s
        # (short failures cannot make others' work count for more), and one attempt at most 10
        unit = max(1.0, self.book.cost_s or 1.0)
        for job, o in zip(jobs, outcomes, strict=True):
            if o.kind == "skipped" and not o.preempted and o.run_s is None:
                continue  # handed out, never started
            seconds = o.run_s if o.run_s is not None else wall_s
            charges.append(Charge(
                user=job.user_id or "_", queue=self.consumer.name, model=self.qdef.model_of(job.data) or "",
                seconds=seconds / len(jobs) if shared else seconds, gpu=gpu, kind=o.kind, batched=shared,
                preempted=o.preempted, lost=o.lost or (o.kind == "skipped" and not o.preempted),
                turns=min(10.0, seconds / unit), device=slot.device or "", org=job.org, cpu_s=o.cpu_s or 0.0,
                memory=o.memory[1] if o.memory else 0))
        if not charges:
            return
        task = asyncio.ensure_future(self._write_charges(charges))
        self._charging.add(task)
        task.add_done_callback(self._charging.discard)

    async def _write_charges(self, charges: list[Charge]) -> None:
        assert self.ledger is not None
        try:
            await self.ledger.charge(charges)
        except Exception:
            log.warning("%s: could not charge %d attempts to the ledger", self.consumer.name, len(charges),
                        exc_info=True)

    async def _upkeep(self) -> None:
        """Every second: the capacity board (workers, starvation, costs, memory peaks), adoption of
        plain BullMQ producers' jobs, waiting jobs past their deadline to start, pending workers and
        the autoscaler's demand, arbitration."""
        busy, pending = self.pool.count("busy"), self.pool.count("pending")
        needed = pending or self.demand.enabled or self.arbiter.arb.peers
        backlog = await self.consumer.backlog(ahead_s=self.lead_s()) if needed else 0
        starved_since = self.arbiter.starving(pending, backlog)
        self.book.gpus_seen(self.pool.slots.values())
        await self.consumer.board.report_capacity(self.book.costs, self.pool.count("idle") + busy, busy, pending,
                                                  starved_since, gpu_fraction=self.worker_fraction(),
                                                  memory=self.book.new_peaks(), cold=self.pool.cold_starts())
        warm = len(self.pool.slots) < self.pool.min_workers and not self.stopping and not self.arbiter.peers_starved
        if warm and self.pool.keep_warm(await self.wanted_models()):
            log.info("%s: starting workers to keep %d warm", self.queue, self.pool.min_workers)
        await self.consumer.adoption.adopt()  # plain BullMQ producers' jobs: into their users' history
        if pending or self.demand.enabled:
            if backlog == 0:
                self.pool.drop_pending(0, keep_warm=not self.arbiter.yield_idle)
            if not self.stopping:
                await self.demand.report(backlog, self.pool.count("busy"))
        if self.arbiter.arb.peers:
            await self.arbiter.arbitrate(backlog, self.handoff.active)
        await self.consumer.expire_overdue()  # waiting jobs past their deadline to start: `expired`
        await self.consumer.age_waiting(self.aging_after_s)  # old priority-3 jobs: to priority 2's front
        await self.consumer.settle_followers()  # identical submits that followed a run that ended
        if (shares := getattr(self.consumer, "shares", None)) is not None:
            await shares.settle()  # GPU shares counted for jobs whose consumer died

    # ------------------------------------------------------------------ lifecycle
    async def drain(self, timeout_s: float, interrupt_s: float = 15.0) -> dict[str, int]:
        """Stop taking jobs; wait up to timeout_s for running ones. Jobs still running then are
        stopped at their next progress report and put back in the queue without using an attempt
        (a training job resumes from its last checkpoint); waiting jobs stay in Redis."""
        self.stopping = True
        tasks = list(self._job_tasks)
        done: set[asyncio.Task[None]] = set()
        pending: set[asyncio.Task[None]] = set()
        requeued = 0
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            for job_id, slot in list(self.running.items()):
                log.info("job %s still running at shutdown: back to the queue", job_id, extra={"job_id": job_id})
                slot.handle.cancel.remote(job_id, requeue=True)
                requeued += 1
            more, pending = await asyncio.wait(pending, timeout=interrupt_s)
            done |= more
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), 2.0)
        return {"finished": len(done), "unfinished": len(pending), "requeued": requeued}

    async def close(self) -> None:
        """Release everything (workers, connections)."""
        self.stopping = True
        self.pool.shutdown()
        if self._charging:  # the last passes' charges written first
            await asyncio.wait(set(self._charging), timeout=5)
        await self.consumer.close()
        if self.hub is not None:
            await self.hub.close()

    def stats(self) -> dict[str, Any]:
        """Counters and the pool's workers by state."""
        out = self.outcomes
        return {"queue": self.queue, "running": len(self.running), "completed": out.completed,
                "failed": out.failed, "requeued": out.requeued, "preempted": out.preempted,
                "worker_calls": self.handoff.calls, "batched_passes": self.handoff.passes,
                "batched_jobs": self.handoff.batched_jobs,
                "batch_size": self.batch_size(),
                "job_ms": round(self.book.cost_s * 1000, 3) if self.book.cost_s is not None else None,
                "workers": self.pool.stats(), "worker_detail": [s.describe() for s in self.pool.slots.values()],
                "running_jobs": {job_id: slot.pid for job_id, slot in self.running.items()},
                "wanted_workers": self.demand.wanted, "stopping": self.stopping, "pid": os.getpid()}
