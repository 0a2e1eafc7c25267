"""OutcomeWriter: records one round's outcomes in Redis and fetches the worker's next jobs.

Completed jobs are completed together, fetching the next ones in the same round trip; failures
are failed one by one (retried per the job's attempts, or for good); jobs that never started or
yielded their GPU go back to the head of the queue. A worker whose jobs keep failing (or that
hit a CUDA error) fetches nothing more and is replaced. While Redis is away, each write is
retried until it goes through (`written`): the jobs stay held, their locks kept.

The consumer is duck-typed (`complete`, `fail`, `requeue`, `take_more`, `lifecycle.wait_again`),
so it is tested with a fake.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from dash_ray.loops import Backoff
from dash_ray.queues import ActiveJob, LockLost, is_transient
from dash_ray.scheduler.arbiter import Arbiter
from dash_ray.scheduler.contract import Outcome
from dash_ray.scheduler.measure import Measurements
from dash_ray.scheduler.pool import Slot

__all__ = ["OutcomeWriter", "sick"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def sick(error: str) -> bool:
    """True for a failure that leaves a worker unusable (a CUDA error poisons its context)."""
    return "CUDA error" in error or "CUBLAS_STATUS" in error or "cuDNN error" in error


class OutcomeWriter:
    """Writes the outcomes of one queue's jobs; counts them."""

    def __init__(self, consumer: Any, book: Measurements, arbiter: Arbiter, *, max_failures: int = 3) -> None:
        self.consumer = consumer
        self.book = book
        self.arbiter = arbiter
        self.max_failures = max_failures  # a worker whose jobs failed this many times in a row is replaced
        self.completed = 0
        self.failed = 0
        self.requeued = 0  # handed to a worker in a batch, not started, put back
        self.preempted = 0

    @property
    def queue(self) -> str:
        return str(self.consumer.name)

    async def written(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run a write of a job's outcome until it goes through: while Redis is down, restarting or
        full, retry with backoff and jitter. The job stays held meanwhile, so its lock is renewed
        (or taken back) as soon as Redis returns; nothing is dropped before it is written."""
        backoff: Backoff | None = None
        while True:
            try:
                return await write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if backoff is None:
                    backoff = Backoff(first_s=0.05, max_s=2.0)
                    log.warning("%s on %s: Redis unavailable (%s); retrying until it is back",
                                what, self.queue, type(exc).__name__)
                await backoff.sleep()

    async def record(self, slot: Slot, jobs: list[ActiveJob], outcomes: list[Outcome],
                     fetch: bool) -> list[ActiveJob]:
        """Record a batch's outcomes in Redis; returns the next jobs for the same worker."""
        done = []
        skipped = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            self.book.ran(job, outcome)
            if outcome.kind == "done":
                slot.failures = 0
                done.append((job, outcome.result))
            elif outcome.kind == "skipped":
                skipped.append(job)
                if outcome.preempted:  # its worker goes, and the GPU share it held with it
                    slot.retire = True
                    self.preempted += 1
            else:
                if outcome.kind == "failed" and outcome.retry:  # a bad input or a cancel says nothing of the worker
                    slot.failures = self.max_failures if sick(outcome.error) else slot.failures + 1
                await self._fail(job, outcome)
        if skipped:
            await self._requeue(skipped, [o for o in outcomes if o.kind == "skipped"])
        await self.arbiter.ended(job.id for job in jobs)  # an attempt asked to yield is over
        fetch = fetch and slot.failures < self.max_failures and not slot.retire
        return await self._complete(done, self.book.batch_size() if fetch else 0)

    async def cancelled(self, job: ActiveJob) -> None:
        """A member of a batched pass was cancelled: it ends now (its pass goes on without it)."""
        await self._fail(job, Outcome("cancelled", error="cancelled"))

    async def timed_out(self, job: ActiveJob, why: str) -> None:
        """A member of a batched pass ran past its own time limit: it fails now (retried per its
        attempts), its pass goes on without it."""
        await self._fail(job, Outcome.failure(why))

    async def _fail(self, job: ActiveJob, outcome: Outcome) -> None:
        try:
            await self.written("failing a job", partial(
                self.consumer.fail, job, outcome.error or "failed", retry=outcome.retry,
                cancelled=outcome.kind == "cancelled", trace=outcome.trace))
            self.failed += 1
        except LockLost as exc:
            log.warning("%s", exc, extra={"job_id": job.id})
        except Exception:
            log.exception("could not finish job %s", job.id, extra={"job_id": job.id})

    async def _requeue(self, skipped: list[ActiveJob], outcomes: list[Outcome]) -> None:
        try:
            await self.written("requeueing jobs", lambda: self.consumer.requeue(*skipped))
            for job, outcome in zip(skipped, outcomes, strict=True):
                if outcome.error:  # it had started: say it waits again
                    await self.written("requeueing jobs", partial(
                        self.consumer.lifecycle.wait_again, job.id, self.queue, job.user_id,
                        f"{outcome.error}; waiting to run again"))
        except Exception:
            log.exception("could not requeue %d jobs", len(skipped))
        self.requeued += len(skipped)

    async def _complete(self, done: list[tuple[ActiveJob, Any]], want: int) -> list[ActiveJob]:
        nxt: list[ActiveJob] = []
        batching = want > 1 and getattr(self.consumer, "batch_of", None) is not None
        if done:
            fetch = 1 if batching else want  # a batch is the next job and the compatible ones behind it
            try:
                nxt, lost = await self.written("completing jobs", lambda: self.consumer.complete(done, fetch_next=fetch))
                self.completed += len(done) - len(lost)
                for lock_lost in lost:
                    log.warning("%s", lock_lost)
            except Exception:
                log.exception("could not complete %d jobs", len(done))
        if batching and nxt:
            with contextlib.suppress(Exception):  # the next round takes them otherwise
                nxt += await self.consumer.take_batch(nxt[0], want)
        elif want and nxt and len(nxt) < want:  # the batch size grew, and the queue is not empty
            with contextlib.suppress(Exception):  # the next round takes them otherwise
                nxt += await self.consumer.take_more(want - len(nxt))
        return nxt
