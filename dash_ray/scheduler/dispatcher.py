"""Dispatcher: one queue's scheduling policy, as plain async code.

Takes a job only when a worker is free (so priority order holds), hands it to the worker,
and on completion chains straight into the next job on the same worker. Jobs measured to be
short go to a worker a few per Ray call (see `batch_size`). Workers are started while there is
a backlog and stopped when idle; Ray's resources cap how many run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from dash_ray.models.cost import cost_shape
from dash_ray.queues import (
    ActiveJob,
    CostBook,
    EventHub,
    LockLost,
    QueueConsumer,
    is_transient,
    retry_pause,
)
from dash_ray.scheduler.contract import SKIPPED, Outcome
from dash_ray.scheduler.demand import wanted_workers
from dash_ray.scheduler.pool import Slot, WorkerPool
from dash_ray.scheduler.preempt import Arbitration, Candidate, starved_for, to_preempt
from dash_ray.scheduler.runner import JobContext
from dash_ray.scheduler.sizing import MemoryBook

__all__ = ["Dispatcher", "model_of"]

log = logging.getLogger(__name__)


T = TypeVar("T")

MAX_LEAD_S = 30.0  # a delayed job counts as demand this long before it is due, at most


class _Backoff:
    """Exponential backoff with jitter: sleep first_s, then twice as long... up to max_s."""

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.tries = 0

    def reset(self) -> None:
        self.tries = 0

    async def sleep(self) -> None:
        delay = min(self.max_s, self.first_s * 2**self.tries)
        self.tries += 1
        await retry_pause(delay * random.uniform(0.5, 1.0))


def _sick(error: str) -> bool:
    """True for a failure that leaves a worker unusable (a CUDA error poisons its context)."""
    return "CUDA error" in error or "CUBLAS_STATUS" in error or "cuDNN error" in error


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
                 cancel_channel: str | None = None, batch_budget_s: float = 0.02, max_batch: int = 8,
                 timeout_s: float = 600.0, cancel_grace_s: float = 3.0, max_failures: int = 3,
                 heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 30.0,
                 want_workers: Callable[[int], Awaitable[None]] | None = None, max_workers: int = 64,
                 want_refresh_s: float = 30.0, arbitration: Arbitration | None = None,
                 gpu_fraction: float = 0.0) -> None:
        self.consumer = consumer
        self.pool = pool
        self.hub = hub
        self.cancel_channel = cancel_channel
        self.batch_budget_s = batch_budget_s
        self.max_batch = max_batch
        self.timeout_s = timeout_s  # the queue's run-time limit; a job's own timeoutS may be lower
        self.cancel_grace_s = cancel_grace_s  # a cancelled job that has not stopped by then: its worker is killed
        self.max_failures = max_failures  # a worker whose jobs failed this many times in a row is replaced
        self.heartbeat_s = heartbeat_s  # how often a busy worker is asked whether it answers
        self.heartbeat_timeout_s = heartbeat_timeout_s  # a busy worker silent this long is killed
        self._pings: dict[int, asyncio.Task[None]] = {}  # worker slot id -> its heartbeat in flight
        # Autoscaling: told how many workers this queue wants (its backlog and running jobs,
        # at most max_workers) when that changes, and every want_refresh_s (the ledger's actor may
        # have restarted and forgotten).
        self.want_workers = want_workers
        self.max_workers = max_workers
        self.want_refresh_s = want_refresh_s
        self.wanted: int | None = None
        self.costs = CostBook()  # measured seconds per unit by job shape, written to Redis for ETAs
        self.memory = MemoryBook()  # measured peak memory by job shape: sizes the GPU fraction
        self.gpu_fraction = gpu_fraction  # the configured GPU share of a worker (0: none)
        self._wanted_at = 0.0
        self.cost_s: float | None = None  # moving average of a job's run time on its worker
        self.running: dict[str, Slot] = {}
        self.active: dict[str, ActiveJob] = {}  # the jobs in `running`
        # GPU arbitration across queues (scheduler/preempt.py)
        self.arb = arbitration or Arbitration()
        self._starved_since = 0.0  # wall time since which this queue is starved (0: it is not)
        self._peers_starved = False  # a queue this one yields to is starved: start no workers
        self._asked: set[str] = set()  # running jobs asked to yield
        self._yield_idle = False  # nothing to do here while another queue is starved: idle workers go
        self.preempted = 0
        self._deadlines: dict[str, tuple[float, str]] = {}  # job id -> (monotonic deadline, why it ends)
        self._kill_reasons: dict[int, str] = {}  # worker slot id -> why the watchdog killed it
        self.stopping = False
        self.stopped = asyncio.Event()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.failed = 0
        self.requeued = 0  # handed to a worker in a batch, not started, put back
        self.calls = 0  # Ray calls to workers (a call may carry a batch of jobs)

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
            await self.hub.add(self.cancel_channel, self._on_cancel, confirm=False)
        house = asyncio.create_task(self._housekeeping())
        log.info("dispatcher for %s started (consumer %s)", self.queue, self.consumer.id)
        backoff = _Backoff()
        try:
            while not self.stopping:
                try:
                    await self._step()
                    backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_transient(exc):
                        log.warning("%s: Redis unavailable (%s); retrying", self.queue, type(exc).__name__)
                    else:
                        log.exception("dispatcher step failed on %s", self.queue)
                    await backoff.sleep()
        finally:
            for task in (house, *self._pings.values()):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await house
            self.stopped.set()

    async def _step(self) -> None:
        # here, not in a timer: no race with take_idle (which holds an idle worker while it
        # waits for a job). Idle workers all go at once while another queue waits for their GPU.
        self.pool.reap_idle(0.0 if self._yield_idle else None)
        slot = self.pool.take_idle()
        if slot is None:
            # Delayed jobs about to be due count: with no worker left nothing would take them (a
            # take is what promotes them), and one started now is ready about when they are due.
            backlog = await self.consumer.backlog(ahead_s=self.lead_s())
            pending = self.pool.count("pending")
            if backlog > pending and not self._peers_starved:
                self.pool.spawn(backlog - pending)
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
        slot = self.pool.prefer(slot, model_of(jobs[0].data))
        # The worker publishes each job's `active` event as it starts it.
        task = asyncio.create_task(self._run(slot, jobs), name=f"job-{jobs[0].id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    def lead_s(self) -> float:
        """How long before its due time a delayed job (a later start, a retry's backoff) counts
        as demand for a worker: about the time a new worker takes to be ready."""
        return min(self.pool.start_s, MAX_LEAD_S)

    # ------------------------------------------------------------------ batching
    def batch_size(self) -> int:
        """How many jobs to hand a worker in one Ray call.

        One, unless this queue's jobs have been measured to be short: then as many as fit in
        `batch_budget_s` (at most `max_batch`). A Ray call costs ~2 ms of CPU in all, which
        dwarfs a job of a millisecond, while a batch of 0.1 s jobs would make a later
        higher-priority job wait behind it; the budget bounds that wait.
        """
        if self.cost_s is None or self.batch_budget_s <= 0 or self.max_batch <= 1:
            return 1
        return max(1, min(self.max_batch, int(self.batch_budget_s / max(self.cost_s, 1e-4))))

    def _measured(self, seconds: float) -> None:
        """Fold one job's run time on its worker into the queue's moving average."""
        self.cost_s = seconds if self.cost_s is None else 0.8 * self.cost_s + 0.2 * seconds

    def _costed(self, jobs: list[ActiveJob], outcomes: list[Outcome], wall_s: float) -> None:
        """Fold the completed jobs of one round into the costs for ETAs, as the seconds they held
        their slot: their run times scaled up to the round's wall time, which adds the Ray call,
        writing the outcome and taking the next job (on a busy machine a fair share of a short
        job's turn)."""
        run = sum(o.run_s for o in outcomes if o.run_s is not None)
        scale = max(1.0, wall_s / run) if run > 0 else 1.0
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome.kind == "done" and outcome.run_s is not None:
                self.costs.measured(self.queue, job.data, outcome.run_s * scale)

    async def _run(self, slot: Slot, jobs: list[ActiveJob]) -> None:
        alive = True
        models: tuple[str, ...] | None = None
        try:
            while jobs:
                t0 = time.monotonic()
                outcomes, models_now, alive = await self._attempt(slot, jobs)
                models = models_now or models
                ran, jobs = jobs, await self._finish(slot, jobs, outcomes, fetch=alive and not self.stopping)
                self._costed(ran, outcomes, time.monotonic() - t0)
        except Exception:
            log.exception("lost track of %d jobs on worker %d", len(jobs), slot.id)  # their locks expire
        finally:
            if slot.failures >= self.max_failures:
                log.warning("worker %d failed %d jobs in a row; replacing it", slot.id, slot.failures)
                self.pool.discard(slot)
            elif slot.retire:
                log.info("worker %d let go: its job yielded the GPU", slot.id)
                self.pool.discard(slot)
            elif alive:
                self.pool.release(slot, models)

    async def _written(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run a write of a job's outcome until it goes through: while Redis is down, restarting or
        full, retry with backoff and jitter. The job stays held meanwhile, so its lock is renewed
        (or taken back) as soon as Redis returns; nothing is dropped before it is written."""
        backoff: _Backoff | None = None
        while True:
            try:
                return await write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if backoff is None:
                    backoff = _Backoff(first_s=0.05, max_s=2.0)
                    log.warning("%s on %s: Redis unavailable (%s); retrying until it is back",
                                what, self.queue, type(exc).__name__)
                await backoff.sleep()

    async def _finish(self, slot: Slot, jobs: list[ActiveJob], outcomes: list[Outcome],
                      fetch: bool) -> list[ActiveJob]:
        """Record a batch's outcomes in Redis; returns the next jobs for the same worker."""
        done = []
        skipped = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome.run_s is not None:
                self._measured(outcome.run_s)
            if outcome.kind == "done":
                slot.failures = 0
                if outcome.memory is not None:
                    self.memory.measured(cost_shape(self.queue, job.data)[0], *outcome.memory)
                done.append((job, outcome.result))
                continue
            if outcome.kind == "skipped":
                skipped.append(job)
                if outcome.preempted:  # its worker goes, and the GPU share it held with it
                    slot.retire = True
                    self.preempted += 1
                continue
            if outcome.kind == "failed" and outcome.retry:  # a bad input or a cancel says nothing of the worker
                slot.failures = self.max_failures if _sick(outcome.error) else slot.failures + 1
            try:
                await self._written("failing a job", partial(
                    self.consumer.fail, job, outcome.error or "failed", retry=outcome.retry,
                    cancelled=outcome.kind == "cancelled", trace=outcome.trace))
                self.failed += 1
            except LockLost as exc:
                log.warning("%s", exc, extra={"job_id": job.id})
            except Exception:
                log.exception("could not finish job %s", job.id, extra={"job_id": job.id})
        if skipped:
            try:
                await self._written("requeueing jobs", lambda: self.consumer.requeue(*skipped))
                for job, outcome in zip(jobs, outcomes, strict=True):
                    if outcome.kind == "skipped" and outcome.error:  # it had started: say it waits again
                        await self._written("requeueing jobs", partial(
                            self.consumer.lifecycle.wait_again, job.id, self.queue, job.user_id,
                            f"{outcome.error}; waiting to run again"))
            except Exception:
                log.exception("could not requeue %d jobs", len(skipped))
            self.requeued += len(skipped)
        for job in jobs:
            if job.id in self._asked:  # the attempt that was asked to yield is over
                self._asked.discard(job.id)
                with contextlib.suppress(Exception):
                    await self.consumer.clear_yield(job.id)
        fetch = fetch and slot.failures < self.max_failures and not slot.retire
        want = self.batch_size() if fetch else 0
        nxt: list[ActiveJob] = []
        if done:
            try:
                nxt, lost = await self._written("completing jobs", lambda: self.consumer.complete(done, fetch_next=want))
                self.completed += len(done) - len(lost)
                for lock_lost in lost:
                    log.warning("%s", lock_lost)
            except Exception:
                log.exception("could not complete %d jobs", len(done))
        if fetch and nxt and len(nxt) < want:  # the batch size grew, and the queue is not empty
            with contextlib.suppress(Exception):  # the next round takes them otherwise
                nxt += await self.consumer.take_more(want - len(nxt))
        return nxt

    async def _attempt(self, slot: Slot, jobs: list[ActiveJob]) -> tuple[list[Outcome], tuple[str, ...], bool]:
        """Run jobs on a worker; returns (outcome per job, the models it holds, whether it lives)."""
        outcomes: dict[str, Outcome] = {}
        ctxs = []
        now = time.monotonic()
        for job in jobs:
            if job.deferred_failure:
                outcomes[job.id] = Outcome.failure(job.deferred_failure, retry=False)
                continue
            self.running[job.id] = slot
            self.active[job.id] = job
            limit = min(job.timeout_s or self.timeout_s, self.timeout_s)
            self._deadlines[job.id] = (now + limit, f"timeout: ran longer than {limit:g}s")
            ctxs.append(JobContext(id=job.id, queue=job.queue, data=job.data, attempt=job.attempt,
                                   attempts=job.attempts, user_id=job.user_id, token=job.token))
        alive, models = True, ()
        try:
            if ctxs:
                budget = 2 * self.batch_budget_s if len(ctxs) > 1 else 0.0
                self.calls += 1
                reply = await slot.handle.run.remote(ctxs, budget)
                models = reply.models
                outcomes.update(zip((c.id for c in ctxs), reply.outcomes, strict=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker actor died (killed by us, crashed, OOM, node lost)
            alive = False
            reason = self._kill_reasons.pop(slot.id, None)
            log.warning("worker %d died running %s: %s", slot.id, [c.id for c in ctxs], reason or type(exc).__name__)
            self.pool.discard(slot)
            started = await self._started([j for j in jobs if j.id not in outcomes])
            for job in jobs:
                if job.id in outcomes:
                    continue
                if job.id not in started:
                    outcomes[job.id] = SKIPPED
                elif reason == "cancelled":
                    outcomes[job.id] = Outcome("cancelled", error="cancelled")
                else:
                    outcomes[job.id] = Outcome.failure(
                        reason or f"the worker process died while running the job ({type(exc).__name__})")
        finally:
            for c in ctxs:
                self.running.pop(c.id, None)
                self.active.pop(c.id, None)
                self._deadlines.pop(c.id, None)
        return [outcomes[j.id] for j in jobs], models, alive

    def _watch(self) -> None:
        """Kill the worker of a job past its deadline (its run-time limit, or the grace after a
        cancel): a hung or stopped worker cannot hold its GPU slot or its job forever."""
        now = time.monotonic()
        for job_id, (deadline, why) in list(self._deadlines.items()):
            slot = self.running.get(job_id)
            if slot is None or now < deadline or slot.id in self._kill_reasons:
                continue
            log.warning("job %s: %s; killing worker %d (pid %s)", job_id, why, slot.id, slot.pid,
                        extra={"job_id": job_id})
            self._kill_reasons[slot.id] = why
            self.pool.kill(slot.handle)  # its pending call fails; _attempt records the outcome

    def _heartbeat(self) -> None:
        """Ask each busy worker whether its process answers (its `info`, on the actor's control
        thread, answers while a job runs); `_ping` kills one that stays silent."""
        for slot in {s.id: s for s in self.running.values()}.values():
            if slot.id not in self._pings:
                self._pings[slot.id] = asyncio.create_task(self._ping(slot), name=f"ping-{slot.id}")

    async def _ping(self, slot: Slot) -> None:
        try:
            await asyncio.wait_for(slot.handle.info.remote(), self.heartbeat_timeout_s)
        except asyncio.TimeoutError:  # not TimeoutError: that is another class before Python 3.11
            if slot in self.running.values() and slot.id not in self._kill_reasons:
                why = f"timeout: the worker stopped answering for {self.heartbeat_timeout_s:g}s (hung or stopped)"
                log.warning("worker %d (pid %s): %s; killing it", slot.id, slot.pid, why)
                self._kill_reasons[slot.id] = why
                self.pool.kill(slot.handle)
        except Exception:
            pass  # the worker died: its pending call fails, and _attempt records the outcome
        finally:
            self._pings.pop(slot.id, None)

    async def _started(self, jobs: list[ActiveJob]) -> set[str]:
        """Which of a dead worker's unfinished jobs had started. The first always counts (its
        `active` event may not have gone out before the worker died); the others by their state
        in Redis, all of them if that cannot be read."""
        if not jobs:
            return set()
        try:
            return {jobs[0].id} | await self.consumer.attempts_started(jobs[1:])
        except Exception:
            log.exception("could not read job states; counting them all as started")
            return {j.id for j in jobs}

    def _on_cancel(self, _channel: str, job_id: str) -> None:
        """The one cancel notification: tell the job's worker now, and kill the worker if the job
        has not stopped within the grace period (a hung job). A job not handed to a worker yet
        learns of its cancel flag with its first event."""
        slot = self.running.get(job_id)
        if slot is not None:
            log.info("cancelling running job %s", job_id, extra={"job_id": job_id})
            slot.handle.cancel.remote(job_id)
            deadline = time.monotonic() + self.cancel_grace_s
            if deadline < self._deadlines.get(job_id, (float("inf"), ""))[0]:
                self._deadlines[job_id] = (deadline, "cancelled")

    async def _housekeeping(self) -> None:
        ticks = 0
        beat = max(1, round(self.heartbeat_s / 0.5))
        while True:
            await retry_pause(0.5)
            ticks += 1
            self._watch()
            if ticks % beat == 0:
                self._heartbeat()
            if ticks % 2:
                continue
            try:
                busy, pending = self.pool.count("busy"), self.pool.count("pending")
                needed = pending or self.want_workers is not None or self.arb.peers
                backlog = await self.consumer.backlog(ahead_s=self.lead_s()) if needed else 0
                if pending and backlog:
                    self._starved_since = self._starved_since or time.time()
                else:
                    self._starved_since = 0.0
                gpus = [s.gpu_bytes for s in self.pool.slots.values() if s.gpu_bytes]
                self.memory.gpu_bytes = max(gpus) if gpus else self.memory.gpu_bytes
                peaks = dict(self.memory.peaks) if self.memory.dirty else None
                self.memory.dirty = False
                await self.consumer.report_capacity(self.costs, self.pool.count("idle") + busy, busy, pending,
                                                    self._starved_since, gpu_fraction=self.worker_fraction(),
                                                    memory=peaks)
                await self.consumer.adopt()  # plain BullMQ producers' jobs: into their users' history
                if ticks % 60 == 0:  # every 30 s: fair-share clocks that no longer matter go
                    await self.consumer.prune_fair()
                if pending or self.want_workers is not None:
                    if backlog == 0:
                        self.pool.drop_pending(0)
                    await self._want(wanted_workers(backlog, self.pool.count("busy"), self.max_workers))
                if self.arb.peers:
                    await self._arbitrate(backlog)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed on %s", self.queue)

    def worker_fraction(self) -> float:
        """The GPU share the queue's next workers ask for: sized by the measured peaks
        (scheduler/sizing.py), within the configured one."""
        return self.memory.fraction(self.gpu_fraction) if self.gpu_fraction > 0 else 0.0

    async def _arbitrate(self, backlog: int) -> None:
        """GPU arbitration (scheduler/preempt.py): ask a running job to yield to a starved queue,
        hold off new workers while one is starved, let idle workers go when another queue
        waits for their GPU share."""
        caps = await self.consumer.capacities(self.arb.peers)
        now = time.time()
        starved = {q: starved_for(cap, now) for q, cap in caps.items()}
        yield_to = max((starved.get(q, 0.0) for q in self.arb.yields_to), default=0.0)
        self._peers_starved = self.arb.preemptible and yield_to > 0
        yield_idle = backlog == 0 and max(starved.values(), default=0.0) >= self.arb.idle_after_s
        if yield_idle and not self._yield_idle:
            log.info("%s: idle, while %s waits for a GPU share: its idle workers go", self.queue,
                     max(starved, key=starved.__getitem__))
        self._yield_idle = yield_idle
        if not self.arb.preemptible or not self.active or yield_to < self.arb.after_s:
            return
        self._asked &= set(self.active)
        counts = await self.consumer.preemptions(self.active)
        pick = to_preempt([Candidate(j.id, j.priority, counts.get(j.id, 0)) for j in self.active.values()],
                          yield_to, self.arb, self._asked)
        if pick is not None:
            await self.consumer.ask_yield(pick)
            self._asked.add(pick)
            log.info("%s: asked job %s to yield its GPU at its next checkpoint (queues starved %.0fs: %s)",
                     self.queue, pick, yield_to, [q for q in self.arb.yields_to if starved.get(q)],
                     extra={"job_id": pick})

    async def _want(self, count: int) -> None:
        """Tell the autoscaler's ledger how many workers this queue wants, if that changed."""
        if self.want_workers is None or self.stopping:
            return
        now = time.monotonic()
        if count == self.wanted and now - self._wanted_at < self.want_refresh_s:
            return
        try:
            await self.want_workers(count)
        except Exception as exc:  # the ledger's actor is restarting: next round
            log.warning("%s: could not report its wanted workers (%s)", self.queue, type(exc).__name__)
            return
        self.wanted, self._wanted_at = count, now

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
        await self.consumer.close()
        if self.hub is not None:
            await self.hub.close()

    def stats(self) -> dict[str, Any]:
        """Counters and the pool's workers by state."""
        return {"queue": self.queue, "running": len(self.running), "completed": self.completed,
                "failed": self.failed, "requeued": self.requeued, "preempted": self.preempted,
                "worker_calls": self.calls,
                "batch_size": self.batch_size(),
                "job_ms": round(self.cost_s * 1000, 3) if self.cost_s is not None else None,
                "workers": self.pool.stats(), "worker_detail": self.pool.detail(),
                "running_jobs": {job_id: slot.pid for job_id, slot in self.running.items()},
                "wanted_workers": self.wanted, "stopping": self.stopping, "pid": os.getpid()}
