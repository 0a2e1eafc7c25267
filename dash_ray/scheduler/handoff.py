"""Handoff: one Ray call that hands a batch of jobs to a worker, and an outcome for every job
of it, also when the worker dies on the way (killed by the watchdog, crashed, out of memory,
its node lost): a job it had not started goes back untouched, one it had started fails (or is
cancelled, when that is why it was killed).

A batching queue's jobs taken together (compatible: `QueueDef.batch`) run in one pass of the
runner; a member cancelled meanwhile is settled at once (`detach`), its outcome from the worker
ignored, while the others run on.

The worker handle and the consumer are duck-typed (`run.remote(ctxs, budget_s, together)`;
`attempts_started(jobs)`, `batch_of`), so it is tested with fakes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dash_ray.queues import ActiveJob
from dash_ray.runners import JobContext
from dash_ray.scheduler.contract import SKIPPED, Outcome
from dash_ray.scheduler.pool import Slot, WorkerPool
from dash_ray.scheduler.watchdog import Watchdog

__all__ = ["Handoff"]

log = logging.getLogger(__name__)


class Handoff:
    """Runs batches of one queue's jobs on its workers; knows which jobs are on a worker now."""

    def __init__(self, consumer: Any, pool: WorkerPool, watchdog: Watchdog, *, timeout_s: float = 600.0,
                 batch_budget_s: float = 0.02) -> None:
        self.consumer = consumer
        self.pool = pool
        self.watchdog = watchdog
        self.timeout_s = timeout_s  # the queue's run-time limit; a job's own timeoutS may be lower
        self.batch_budget_s = batch_budget_s
        self.active: dict[str, ActiveJob] = {}  # the jobs on a worker now
        self.together: dict[str, frozenset[str]] = {}  # those running in one pass with others: the pass's ids
        self.settled: set[str] = set()  # members whose outcome was written before their pass ended
        # taken jobs cancelled before they reached a worker: job id -> when (time.monotonic)
        self.cancelled_early: dict[str, float] = {}
        self.calls = 0  # Ray calls to workers (a call may carry a batch of jobs)
        self.passes = 0  # of them, batched passes (jobs run together)
        self.batched_jobs = 0  # jobs run in batched passes

    def detach(self, job_id: str) -> ActiveJob | None:
        """A member of a batched pass ends before its pass (cancelled, or past its own time limit):
        its outcome is written now (by the caller), and the one its worker reports is ignored; the
        pass runs on for the others. None: not such a member, settled already, or the pass's last
        member (then the pass ends the usual way: stopped, or its worker killed)."""
        members = self.together.get(job_id)
        if members is None or job_id in self.settled or not members - self.settled - {job_id}:
            return None
        self.settled.add(job_id)
        self.watchdog.untrack(job_id)  # its worker goes on with the others: no cancel deadline
        return self.active.get(job_id)

    def _together(self, jobs: list[JobContext]) -> bool:
        """Whether these jobs run in one pass: a batching queue's, all with one batch key."""
        batch_of = getattr(self.consumer, "batch_of", None)
        if batch_of is None or len(jobs) < 2:
            return False
        keys = {(b or (None,))[0] for b in (batch_of(j.data) for j in jobs)}
        return len(keys) == 1 and None not in keys

    async def run(self, slot: Slot, jobs: list[ActiveJob]) -> tuple[list[Outcome], tuple[str, ...], bool]:
        """Run jobs on a worker; returns (outcome per job, the models it holds, whether it lives)."""
        outcomes: dict[str, Outcome] = {}
        ctxs = []
        for job in jobs:
            if job.deferred_failure:
                outcomes[job.id] = Outcome.failure(job.deferred_failure, retry=False)
                self._cancelled_early(job)
                continue
            self.active[job.id] = job
            self.watchdog.track(job.id, slot, min(job.timeout_s or self.timeout_s, self.timeout_s))
            ctxs.append(JobContext(id=job.id, queue=job.queue, data=job.data, attempt=job.attempt,
                                   attempts=job.attempts, user_id=job.user_id, token=job.token,
                                   created_at=job.created_at, announced=job.announced,
                                   stop=job.stop or self._cancelled_early(job), trace=job.trace))
        alive, models = True, ()
        together = self._together(ctxs)
        if together:
            members = frozenset(c.id for c in ctxs)
            self.together.update((c.id, members) for c in ctxs)
            self.passes += 1
            self.batched_jobs += len(ctxs)
        try:
            if ctxs:
                budget = 2 * self.batch_budget_s if len(ctxs) > 1 and not together else 0.0
                self.calls += 1
                reply = await slot.handle.run.remote(ctxs, budget, together)
                models = reply.models
                outcomes.update(zip((c.id for c in ctxs), reply.outcomes, strict=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker actor died (killed by us, crashed, OOM, node lost)
            alive = False
            await self._died(slot, jobs, outcomes, exc)
        finally:
            for c in ctxs:
                self.active.pop(c.id, None)
                self.together.pop(c.id, None)
                self.watchdog.untrack(c.id)
        return [outcomes[j.id] for j in jobs], models, alive

    def _cancelled_early(self, job: ActiveJob) -> bool:
        """Whether a cancel came for this attempt between its take and now (one that came for an
        earlier attempt of the id, while its end was being written, does not count)."""
        when = self.cancelled_early.pop(job.id, None)
        return when is not None and when >= job.taken_at

    def take_settled(self, jobs: list[ActiveJob], outcomes: list[Outcome]) -> tuple[list[ActiveJob], list[Outcome]]:
        """The jobs (and outcomes) of a pass left to record: those not settled already (`detach`)."""
        if not self.settled:
            return jobs, outcomes
        kept = [(j, o) for j, o in zip(jobs, outcomes, strict=True) if j.id not in self.settled]
        self.settled.difference_update(j.id for j in jobs)
        return [j for j, _ in kept], [o for _, o in kept]

    async def _died(self, slot: Slot, jobs: list[ActiveJob], outcomes: dict[str, Outcome], exc: Exception) -> None:
        """The outcomes of a dead worker's jobs that have none."""
        reason = self.watchdog.killed(slot)
        unfinished = [j for j in jobs if j.id not in outcomes]
        log.warning("worker %d died running %s: %s", slot.id, [j.id for j in unfinished], reason or type(exc).__name__)
        self.pool.discard(slot)
        started = await self._started(unfinished)
        for job in unfinished:
            if job.id not in started:
                outcomes[job.id] = SKIPPED
            elif reason == "cancelled":
                outcomes[job.id] = Outcome("cancelled", error="cancelled")
            elif reason:  # killed for it (past its time, or hung): its attempt
                outcomes[job.id] = Outcome.failure(reason)
            else:  # the process or its node died under it: not its owner's to pay (the ledger)
                outcomes[job.id] = Outcome("failed", error=f"the worker process died while running the job "
                                           f"({type(exc).__name__})", retry=True, lost=True)

    async def _started(self, jobs: list[ActiveJob]) -> set[str]:
        """Which of a dead worker's unfinished jobs had started. The first always counts (the take
        announced it, or its worker's `active` event may not have gone out before it died); the
        others by their state in Redis, all of them if that cannot be read."""
        if not jobs:
            return set()
        try:
            return {jobs[0].id} | await self.consumer.attempts_started(jobs[1:])
        except Exception:
            log.exception("could not read job states; counting them all as started")
            return {j.id for j in jobs}
