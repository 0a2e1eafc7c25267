"""QueueConsumer: the consumer side of a durable queue: take, complete, fail, requeue.

It speaks BullMQ's Lua scripts directly (rather than running `bullmq.Worker`'s own loop) so
that the scheduler decides when to take a job: only when a GPU worker is free, which keeps
priority order honest, and it can chain `complete` with fetching the next job in one call.

Its other parts are collaborators it builds: `locks` (queues/locks.py: the held jobs' locks,
stalled checks, presence), `board` (queues/board.py: capacity and yield flags) and `adoption`
(queues/adoption.py: foreign jobs' records, fair-share clocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import msgpack
from bullmq import Job as BullJob
from bullmq import Queue as BullQueue
from bullmq.custom_errors import UnrecoverableError
from bullmq.redis_connection import loadScript
from bullmq.scripts import raw2NextJobData
from redis.asyncio import Redis

from dash_ray.models.base import is_user_id
from dash_ray.models.events import JobCompletedEvent, JobFailedEvent
from dash_ray.models.images import job_ref
from dash_ray.models.queues import QUEUE_TABLE
from dash_ray.models.status import CANCELLING, FINAL
from dash_ray.queues.active import ActiveJob, FailOutcome, LockLost
from dash_ray.queues.adoption import Adoption
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.board import CapacityBoard
from dash_ray.queues.connection import is_transient
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Lifecycle
from dash_ray.queues.locks import LockKeeper
from dash_ray.queues.lua import AGE, PEEK_READY
from dash_ray.queues.shares import GpuShares

# A queue's batch rule (`QueueDef.batch_of`): a job's (key, rows), or None when it runs alone.
BatchOf = Callable[[dict[str, Any]], "tuple[str, int] | None"]

__all__ = ["ActiveJob", "FailOutcome", "LockLost", "QueueConsumer"]

log = logging.getLogger(__name__)


def _keep_trace(bull_job: Any, trace: str) -> None:
    """BullMQ's Python port records `traceback.format_exc()` when a job fails, which outside an
    `except` block is "NoneType: None" (bull-board's Error tab showed that). Record the worker's
    real traceback instead, or none (a cancel, a bad input)."""
    def update() -> None:
        if not trace:
            return
        limit = bull_job.opts.get("stackTraceLimit")
        kept = [*bull_job.stacktrace, trace]
        bull_job.stacktrace = [] if limit == 0 else kept[-limit:] if limit else kept

    bull_job.updateStacktrace = update


def _move_to_active_call(scripts: Any, token: str, lock_ms: int, now_ms: int) -> tuple[list[str], list[Any]]:
    """BullMQ's moveToActive's keys and arguments (as its Scripts.moveToActive makes them)."""
    keys = scripts.getKeys(["wait", "active", "prioritized", "events", "stalled", "limiter",
                            "delayed", "paused", "meta", "pc", "marker"])
    opts = msgpack.packb({"token": token, "lockDuration": lock_ms, "limiter": None}, use_bin_type=True)
    return keys, [scripts.keys[""], now_ms, opts]


async def _move_to_active(scripts: Any, batch: Batch, token: str, lock_ms: int, now_ms: int) -> None:
    """Queue BullMQ's moveToActive on a batch."""
    keys, args = _move_to_active_call(scripts, token, lock_ms, now_ms)
    await scripts.commands["moveToActive"](keys=keys, args=args, client=batch)


def _count_ready(scripts: Any, batch: Batch) -> Batch:
    """Queue the reads `_ready` needs on a batch."""
    k = scripts.keys
    return batch.add("llen", k["wait"]).add("zcard", k["prioritized"]).add("hexists", k["meta"], "paused")


SKEW_S = 60.0  # how far this host's clock may lag Redis's for the sweep of deadlines to see them due


def _iso(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _ready(wait: Any, prio: Any, paused: Any) -> int:
    """Jobs ready to run from the replies of `_count_ready`: 0 while paused."""
    return 0 if paused else int(wait) + int(prio)


class QueueConsumer:
    """Takes jobs of one queue in priority order, holds their locks and finishes them."""

    def __init__(
        self,
        redis: Redis,
        blocking_redis: Redis,
        queue: str,
        lifecycle: Lifecycle,
        *,
        prefix: str = "bull",
        lock_duration_s: float = 30.0,
        stalled_interval_s: float = 15.0,
        max_stalled_count: int = 1,
        consumer_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.blocking = blocking_redis
        self.name = queue
        self.lifecycle = lifecycle
        self.keys = Keys(prefix)
        self.lock_ms = int(lock_duration_s * 1000)
        self.id = consumer_id or uuid.uuid4().hex
        self.queue = BullQueue(queue, {"connection": redis, "prefix": prefix, "lockDuration": self.lock_ms})
        self.scripts = self.queue.scripts
        # BullMQ ships this script but its Python client does not load it: put back a job that never started.
        self._requeue = redis.register_script(loadScript("moveJobFromActiveToWait-9.lua"))
        register(*self.scripts.commands.values(), self._requeue)
        self.locks = LockKeeper(redis, blocking_redis, queue, self.keys, self.scripts, lifecycle, consumer_id=self.id,
                                lock_ms=self.lock_ms, stalled_ms=int(stalled_interval_s * 1000),
                                max_stalled_count=max_stalled_count)
        self.board = CapacityBoard(redis, queue, lifecycle.keys)
        self.adoption = Adoption(redis, queue, lifecycle)
        self.held = self.locks.held  # job id -> ActiveJob: the attempts whose locks we hold
        self._iterations: set[asyncio.Task[None]] = set()  # job schedulers' next runs being made
        self._next_delayed_ms = 0.0
        self._peek: Any = redis.register_script(PEEK_READY)  # called with a Batch as its client
        self._age: Any = redis.register_script(AGE.text(ns=self.keys.ns))
        # TAKE: moveToActive at Redis's clock, and the taken job's `active` event (see take.lua)
        self._take: Any = redis.register_script(lifecycle.calls.take_text(self.scripts.commands["moveToActive"].script))
        self._take_call = lifecycle.calls.take(queue)
        register(self._peek, self._take)
        # Batched runs: with a rule, a take of several jobs takes the head's compatible ones only.
        self.batch_of: BatchOf | None = None
        # GPU shares (queues/shares.py): what it takes is admitted to its owners' shares, if set.
        self.shares: GpuShares | None = None

    # ------------------------------------------------------------ taking
    def _active(self, reply: Any, token: str) -> ActiveJob | None:
        """The job a moveToActive / moveToFinished-with-fetch reply locked with `token`, if any."""
        raw = raw2NextJobData(reply) if reply else None
        if not raw:
            return None
        job_data, job_id, _limit_until, delay_until = raw
        if delay_until:
            self._next_delayed_ms = float(delay_until)
        if not job_data:
            return None
        bull = BullJob.fromJSON(self.queue, job_data, job_id)
        bull.token = token
        job = ActiveJob(
            id=str(job_id),
            queue=self.name,
            data=bull.data if isinstance(bull.data, dict) else {"value": bull.data},
            token=token,
            attempts_made=bull.attemptsMade,
            attempts=int(bull.opts.get("attempts") or 1),
            priority=bull.priority,
            created_at=bull.timestamp / 1000,
            bull=bull,
            deferred_failure=bull.deferredFailure,
            timeout_s=float(bull.opts.get("timeoutS") or 0) or None,
            start_by_ms=int(bull.opts["startBy"]) if isinstance(bull.opts.get("startBy"), int | float) else None,
            trace=_carrier(bull.opts),
            org=bull.opts.get("org") if is_user_id(bull.opts.get("org")) else None,
        )
        self.held[job.id] = job
        if bull.repeatJobKey:  # a job scheduler's: its next run is made as this one starts (as BullMQ's workers do)
            task = asyncio.ensure_future(self._next_iteration(bull))
            self._iterations.add(task)
            task.add_done_callback(self._iterations.discard)
        return job

    async def _next_iteration(self, bull: BullJob) -> None:
        """Make the next job of the job scheduler that made `bull` (`upsertJobScheduler` with
        override off, as BullMQ's own workers call it; a scheduler removed meanwhile makes none)."""
        for attempt in range(4):  # a Redis blip must not end the schedule: tried again, as BullMQ's workers do
            try:
                await self.queue.upsertJobScheduler(bull.repeatJobKey, (bull.opts or {}).get("repeat") or {},
                                                    bull.name, bull.data, bull.opts, override=False,
                                                    producer_id=bull.id)
                return
            except Exception as exc:
                if attempt == 3:
                    log.warning("%s: could not schedule the run after %s (%s)", self.name, bull.id, exc)
                    return
                await asyncio.sleep(0.25 * 2 ** attempt)

    async def take(self, block_s: float = 0.0, up_to: int = 1) -> list[ActiveJob]:
        """Lock the next job (priority, then FIFO; due delayed jobs promoted), waiting up to
        block_s for one; then up to `up_to - 1` more of those ready, in priority order.

        The first take also counts what is left in the queue, in the same round trip, so a
        lone job costs one round trip. The job it takes first is announced by the take itself
        (its `active` event, `ActiveJob.announced`: see take.lua). Waiting, the take is queued
        behind the wait for BullMQ's marker (BZPOPMIN) on the blocking connection: Redis runs it
        the moment the wait ends, so a job submitted to an idle queue is taken, and shows as
        started, without a round trip back to here.
        """
        deadline = time.monotonic() + block_s
        batched = self.batch_of is not None and up_to > 1
        wait_s: float | None = None  # the first take does not wait
        while True:
            token = self.locks.token()
            self._next_delayed_ms = 0.0
            batch = Batch(self.redis if wait_s is None else self.blocking)
            if wait_s is not None:
                batch.add("bzpopmin", self.scripts.keys["marker"], max(wait_s, 0.002))
            keys, args = _move_to_active_call(self.scripts, token, self.lock_ms, 0)  # TAKE reads the time
            await self._take(keys=[*keys, *self._take_call[0]], args=[*args, *self._take_call[1]], client=batch)
            _count_ready(self.scripts, batch)
            if batched:
                await self._queue_peek(batch, up_to - 1)
            replies = await batch.execute()
            (raw, seq, cancelled, now_ms), *counts = replies if wait_s is None else replies[1:]
            job = self._active(raw, token)
            if job is not None:
                job.announced, job.stop = int(seq) > 0, bool(int(cancelled))
                head = await self.expire_taken([job], float(now_ms))  # first: it comes before those behind it
                followers: list[ActiveJob] = []  # taken by take_more, which ends the late ones itself
                if batched:
                    try:
                        followers = await self._take_compatible(job, counts[3], up_to)
                    except Exception:  # the head is ours: it runs, alone
                        log.warning("could not take a batch with job %s", job.id, exc_info=True)
                else:
                    more = min(up_to - 1, _ready(*counts[:3]))
                    followers = await self.take_more(more) if more > 0 else []
                jobs = [*head, *followers]
                if jobs:
                    return jobs
                wait_s = None  # every one was past its deadline (ended `expired`): the next, at once
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait_s = left
            if self._next_delayed_ms:  # on Redis's clock, as the take that promotes it
                wait_s = min(left, max(0.002, (self._next_delayed_ms - float(now_ms)) / 1000))

    async def take_more(self, n: int) -> list[ActiveJob]:
        """Lock up to n more ready jobs in one round trip (no waiting); in priority order."""
        if n <= 0:
            return []
        batch = Batch(self.redis)
        tokens = [self.locks.token() for _ in range(n)]
        now = round(time.time() * 1000)
        for token in tokens:
            await _move_to_active(self.scripts, batch, token, self.lock_ms, now)
        jobs = (self._active(raw, token) for raw, token in zip(await batch.execute(), tokens, strict=True))
        return await self.expire_taken([job for job in jobs if job is not None])

    async def expire_taken(self, jobs: list[ActiveJob], now_ms: float | None = None) -> list[ActiveJob]:
        """The taken jobs that may start (every take ends here): those not past their deadline to
        start (`_expire`), admitted to their owners' GPU shares (`shares.admit`: the others wait
        for them, their locks given up)."""
        jobs = await self._expire(jobs, now_ms)
        if self.shares is None or not jobs:
            return jobs
        admitted = await self.shares.admit(jobs)
        if len(admitted) < len(jobs):
            kept = {j.id for j in admitted}
            for j in jobs:
                if j.id not in kept:
                    self.held.pop(j.id, None)  # parked: its lock was given up with it
        return admitted

    async def _expire(self, jobs: list[ActiveJob], now_ms: float | None = None) -> list[ActiveJob]:
        """The taken jobs that may start: one that was never started (its record has no `started`:
        a job put back after it started keeps it), not announced, and past its deadline to start
        (the record's `startBy`, on Redis's clock: `now_ms` where the take read it) ends
        `expired` here, unrun. Jobs without a deadline cost nothing; the others one round trip.
        One that cannot be ended now (Redis unreachable) runs, late; one whose lock was lost is
        not ours to run."""
        maybe = [j for j in jobs if j.start_by_ms is not None and not j.announced]
        if not maybe:
            return jobs
        batch = Batch(self.redis)
        if now_ms is None:
            batch.add("time")
        for job in maybe:
            batch.add("hmget", self.keys.job(job.id), "startBy", "started")
        replies = await batch.execute()
        if now_ms is None:
            secs, micros = replies.pop(0)
            now_ms = int(secs) * 1000 + int(micros) // 1000
        gone = set()
        for job, (start_by, started) in zip(maybe, replies, strict=True):
            if start_by is None or started or now_ms <= float(start_by):
                continue
            try:
                await self.fail(job, f"expired: not started by its deadline ({_iso(float(start_by))})", expired=True)
                gone.add(job.id)
            except LockLost:
                gone.add(job.id)
            except Exception:
                log.warning("could not end job %s as expired; it runs late", job.id, exc_info=True)
                with contextlib.suppress(Exception):
                    await self.redis.hdel(self.keys.job(job.id), CANCELLING)
        return [j for j in jobs if j.id not in gone] if gone else jobs

    async def _queue_peek(self, batch: Batch, n: int) -> None:
        k = self.scripts.keys
        await batch.evalsha(self._peek.sha, 3, k["wait"], k["prioritized"], k["meta"], k[""], n)

    async def peek(self, n: int) -> list[dict[str, Any]]:
        """The data of the next `n` jobs a take would lock, in order (one round trip; a read)."""
        batch = Batch(self.redis)
        await self._queue_peek(batch, n)
        (peeked,) = await batch.execute()
        out = []
        for raw in peeked[1::2]:
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append(data)
        return out

    async def take_batch(self, head: ActiveJob, up_to: int, rows: int = 0) -> list[ActiveJob]:
        """Lock the jobs that may run in one pass with `head` (taken already, with `rows` more rows
        taken with it): those right behind it in the queue's order with its batch key, up to
        `up_to` rows in all. Two round trips (a read, then the takes); none when the queue batches
        nothing."""
        if self.batch_of is None or up_to <= 1:
            return []
        batch = Batch(self.redis)
        await self._queue_peek(batch, up_to - 1)
        (peeked,) = await batch.execute()
        return await self._take_compatible(head, peeked, up_to, rows)

    async def _take_compatible(self, head: ActiveJob, peeked: list[Any], up_to: int,
                               extra: int = 0) -> list[ActiveJob]:
        """Take the prefix of `peeked` (ids and data, in take order) that shares `head`'s batch key.

        Only the jobs right behind the head in the queue's order, never one past a job that cannot
        join (so never past a priority, nor out of the fair order); `head.batch_closed` says whether
        the prefix ended at such a job or at `up_to` rows. A job taken that is not one read (another
        came first meanwhile) goes back to the head of the queue untouched (or, if that fails, runs
        after the batch)."""
        assert self.batch_of is not None
        first = self.batch_of(head.data)
        if first is None:
            head.batch_closed = True
            return []
        key, rows = first
        rows += extra
        want: list[str] = []
        for job_id, raw in zip(peeked[::2], peeked[1::2], strict=True):
            try:
                data = json.loads(raw) if raw else None
            except Exception:  # not JSON (or absurdly nested): it cannot join
                data = None
            this = self.batch_of(data) if isinstance(data, dict) else None
            if this is None or this[0] != key or rows + this[1] > up_to:
                head.batch_closed = True
                break
            rows += this[1]
            want.append(str(job_id))
        else:
            head.batch_closed = rows >= up_to
        if not want:
            return []
        taken = await self.take_more(len(want))
        wanted = set(want)
        ours = [j for j in taken if j.id in wanted]
        stray = [j for j in taken if j.id not in wanted]
        if stray:
            try:
                await self.requeue(*stray)
            except Exception:
                log.warning("could not put back %s; they run after the batch", [j.id for j in stray], exc_info=True)
                return taken
        return ours

    async def complete(self, done: list[tuple[ActiveJob, Any]], fetch_next: int = 0,
                       ) -> tuple[list[ActiveJob], list[LockLost]]:
        """Complete several attempts in one round trip, each publishing its `job:completed`; the
        first `fetch_next` of them also lock a next job (BullMQ's fetch-next, one per completion).

        Returns (the next jobs, a LockLost per job another consumer owns now: nothing published for it).
        """
        batch = Batch(self.redis)
        calls = []
        for i, (job, result) in enumerate(done):
            fetch = i < fetch_next
            # BullMQ locks the next job with the same token (one token per slot, as its workers do).
            remove = job.bull.opts.get("removeOnComplete", False)
            keys, args = self.scripts.moveToCompletedArgs(job.bull, result, remove, job.token, fetch)
            await self.scripts.commands["moveToFinished"](keys=keys, args=args, client=batch)
            event = JobCompletedEvent(job_id=job.id, queue=self.name, user_id=job.user_id, result=result)
            # Published in the same round trip, but only if the completion above was ours.
            await self.lifecycle.finish(event, batch=batch, guard=str(args[1]),
                                        duration_s=time.monotonic() - job.taken_at)
            calls.append((job, event, fetch))
        # Their GPU shares given back in the same round trip: before the next jobs it locks are admitted.
        released = self.shares is not None and await self.shares.release([j for j, _ in done], batch)
        durable = self.lifecycle.durability
        waited = durable.on(batch, self.keys)  # (DASH_REDIS_WAIT_REPLICAS) on a replica, in the same round trip
        # Raises if Redis cannot be reached: the jobs stay held (their locks renewed) for a retry.
        replies = await batch.execute()
        if waited and (acked := durable.acked(replies)) < durable.replicas:
            log.warning("%s: %d completion(s) written, but %s of %d replicas acknowledged them in time",
                        self.name, len(done), acked, durable.replicas)
        if released:
            replies.pop()
        nxt: list[ActiveJob] = []
        lost: list[LockLost] = []
        for (job, event, fetch), raw, (seq,) in zip(calls, replies[::2], replies[1::2], strict=True):
            self.held.pop(job.id, None)
            if isinstance(raw, int) and raw < 0:
                lost.append(LockLost(f"job {job.id}: cannot complete (code {raw})"))
                continue
            if not int(seq):  # ours, but BullMQ's retention removed its hash before the guard ran
                await self.lifecycle.finish(event)
            following = self._active(raw, job.token) if fetch else None
            if following is not None:
                nxt.append(following)
        return await self.expire_taken(nxt), lost

    async def requeue(self, *jobs: ActiveJob) -> bool:
        """Put held jobs that never started back at the head of their queue, in their order, in one
        round trip (no attempt used); False if any could not be (its lock was lost)."""
        k = self.scripts.keys
        keys = [k["active"], k["wait"], k["stalled"], k["paused"], k["meta"], k["limiter"],
                k["prioritized"], k["marker"], k["events"]]
        batch = Batch(self.redis)
        for job in reversed(jobs):  # each goes to the head: the last one first keeps their order
            await self._requeue(keys=keys, args=[job.id, job.token, self.keys.bull(self.name, job.id)],
                                client=batch)  # type: ignore[arg-type]
        ok = True
        codes = await batch.execute()
        for job, code in zip(reversed(jobs), codes, strict=True):
            self.held.pop(job.id, None)
            if isinstance(code, int) and code < 0:
                log.warning("job %s: cannot requeue (code %s)", job.id, code, extra={"job_id": job.id})
                ok = False
        if self.shares is not None:  # back in the queue (those put back): they hold no GPU share
            await self.shares.release([j for j, code in zip(reversed(jobs), codes, strict=True)
                                       if not (isinstance(code, int) and code < 0)])
        return ok

    async def attempts_started(self, jobs: list[ActiveJob]) -> set[str]:
        """Which of these held jobs' current attempts have begun on a worker: their `active` event
        of this attempt is in their state (one round trip)."""
        batch = Batch(self.redis)
        for job in jobs:
            batch.add("hmget", self.keys.job(job.id), "status", "attempt")
        replies = await batch.execute() if jobs else []
        return {job.id for job, (status, attempt) in zip(jobs, replies, strict=True)
                if status == "active" and str(attempt) == str(job.attempt)}

    async def fail(self, job: ActiveJob, error: str, *, retry: bool = True, cancelled: bool = False,
                   expired: bool = False, trace: str = "") -> FailOutcome:
        """Fail the attempt: retry per attempts/backoff, else fail (or cancel, or expire: not
        started by its deadline) for good; publish it.

        Raises a transient error if Redis cannot be reached: call again with the same job (the
        step that went through is not repeated); the job stays held until its failure is written.
        """
        final = cancelled or expired or not retry or job.attempt >= job.attempts
        ending = "expired" if expired else "cancelled" if cancelled else "failed"
        if not job.moved_to_failed:
            if ending != "failed":  # a read between BullMQ's move and the final event says so, not failed
                await self.redis.hset(self.keys.job(job.id), CANCELLING, "expired" if expired else "1")
            err: Exception = UnrecoverableError(error) if final else Exception(error)
            _keep_trace(job.bull, trace)
            try:
                await job.bull.moveToFailed(err, job.token)
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.held.pop(job.id, None)  # lock lost: someone else has it now
                if ending != "failed":  # and it is not ours to end
                    await self.redis.hdel(self.keys.job(job.id), CANCELLING)
                raise LockLost(f"job {job.id}: cannot fail ({exc})") from exc
            job.moved_to_failed = True
        self.held.pop(job.id, None)  # BullMQ holds its outcome now; the event below may be retried
        if final:
            await self.lifecycle.finish(JobFailedEvent(job_id=job.id, queue=self.name, user_id=job.user_id,
                                                       error=error, status=ending))
            return FailOutcome(ending)
        delay_s = (job.bull.delay or 0) / 1000
        when = f" in {delay_s:g}s" if delay_s else ""
        await self.lifecycle.wait_again(
            job.id, self.name, job.user_id, f"attempt {job.attempt} of {job.attempts} failed: {error}; retrying{when}",
            status="retrying", attempt=job.attempt + 1, attempts=job.attempts, position=not delay_s,
        )
        return FailOutcome("retrying", delay_s)

    async def age_waiting(self, after_s: float, most: int = 1000) -> int:
        """Aging: the queue's waiting priority-3 jobs made more than `after_s` ago move to the
        front of priority 2 (age.lua), so newer higher-priority work cannot hold them back for
        longer than that. Returns how many moved."""
        if after_s <= 0:
            return 0
        keys, args = AGE.pack({"prioritized": self.keys.bull(self.name, "prioritized")},
                              {"bull_prefix": self.keys.bull(self.name, ""), "level": 3,
                               "cutoff_ms": int((time.time() - after_s) * 1000), "most": most})
        return int(await self._age(keys=keys, args=args))

    async def expire_overdue(self, most: int = 200) -> int:
        """End `expired` this queue's jobs still waiting (or delayed) past their deadline to start
        (`options.startBy`; a take ends the ones it meets late), on Redis's clock: each taken out
        of BullMQ, then its final event. An entry is acted on only while it is what it was made
        for (the record of this queue, with this deadline, never started, waiting or delayed): an
        id reused, a job started, retried or over, or a record gone, just leaves the deadlines.
        Returns how many expired."""
        key = self.keys.start_by(self.name)
        # One round trip: Redis's time and the earliest deadlines (to the local clock, with room for
        # it to lag Redis's); the due ones are those at or before Redis's time.
        batch = Batch(self.redis).add("time")
        batch.add("zrangebyscore", key, "-inf", int((time.time() + SKEW_S) * 1000), start=0, num=most, withscores=True)
        (secs, micros), soonest = await batch.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        due: list[Any] = [(job_id, score) for job_id, score in soonest if score <= now_ms]
        if not due:
            return 0
        batch = Batch(self.redis)
        for job_id, _deadline in due:
            batch.add("hmget", self.keys.job(str(job_id)), "queue", "startBy", "started", "status", "userId")
        records = await batch.execute()
        n = 0
        for (job_id, deadline), (queue, start_by, started, status, user_id) in zip(due, records, strict=True):
            if (queue != self.name or start_by is None or int(float(start_by)) != int(deadline) or started
                    or status not in ("waiting", "delayed")):
                continue
            # BullMQ removes only a job no one holds: one taken meanwhile is the take's to end.
            if await self.queue.backend.remove(str(job_id), True) == 1:
                await self.lifecycle.finish(JobFailedEvent(
                    job_id=str(job_id), queue=self.name, user_id=user_id, status="expired",
                    error=f"expired: not started by its deadline ({_iso(float(deadline))})"))
                n += 1
        await self.redis.zrem(key, *[job_id for job_id, _d in due])
        return n

    async def resolve_inputs(self, jobs: list[ActiveJob]) -> list[ActiveJob]:
        """Resolve the `job://<id>/images/<n>` image inputs of jobs about to run to the result
        files they name (`artifact://<path>`), each from a completed job of the same owner (a
        flow's children, done by now). A job whose input cannot be had fails, not retried (its
        input job failed, was cancelled, is another user's or is gone). Returns the others."""
        fields = _image_fields(self.name)
        if not fields:
            return jobs
        ready: list[ActiveJob] = []
        for job in jobs:
            refs = [(f, i, job_ref(v)) for f, i, v in _image_values(job.data, fields) if v.startswith("job://")]
            if not refs or job.deferred_failure:  # (a flow's parent whose child failed: it fails with that)
                ready.append(job)
                continue
            try:
                for field, index, ref in refs:
                    _put(job.data, field, index, await self._artifact_of(job, ref))
            except ValueError as exc:
                try:
                    await self.fail(job, f"input {exc}", retry=False)
                except Exception:  # (its lock lost, or Redis away: the attempt is taken back when its lock expires)
                    log.warning("%s: could not fail job %s for its input", self.name, job.id, exc_info=True)
                continue
            ready.append(job)
        return ready

    async def _artifact_of(self, job: ActiveJob, ref: tuple[str, int] | None) -> str:
        if ref is None:
            raise ValueError("is not a job's image (job://<id>/images/<n>)")
        source, n = ref
        status, owner, result = cast(list[Any], await self.redis.hmget(self.keys.job(source), "status", "userId",
                                                                       "result"))
        if owner is None or owner != job.user_id:
            raise ValueError(f"job {source} is gone")
        if status != "completed":
            raise ValueError(f"job {source} did not complete ({status})")
        value = json.loads(result) if result else {}
        images = value.get("images") if isinstance(value, dict) else None
        if not isinstance(images, list):
            images = [value["image"]] if isinstance(value, dict) and isinstance(value.get("image"), str) else []
        if n >= len(images) or not isinstance(images[n], str):
            raise ValueError(f"job {source} has no image {n}")
        path = images[n].split("?", 1)[0].removeprefix("/v1/artifacts/")
        if not path.startswith(f"{owner}/"):
            raise ValueError(f"job {source}'s image {n} is not a result file")
        return f"artifact://{path}"

    async def settle_followers(self, most: int = 100) -> int:
        """End the jobs that followed a run of their payload (identical submits made while it
        ran: `options.cache`) as that run ended: completed with its result, or failed, cancelled
        or expired as it was (a retry of one is a new submit). Its final event queued them
        (finish.lua); this is safe to run again (a follower ended already stays as it is).
        Returns how many ended."""
        key = self.keys.settle(self.name)
        leaders = [str(x) for x in await self.redis.zrange(key, 0, most - 1)]
        if not leaders:
            return 0
        batch = Batch(self.redis)
        for leader in leaders:
            batch.add("hmget", self.keys.job(leader), "status", "result", "error", "userId")
            batch.add("smembers", self.keys.followers(leader))
        replies = await batch.execute()
        n = 0
        for i, leader in enumerate(leaders):
            (status, result, error, leader_owner), followers = replies[2 * i], replies[2 * i + 1]
            if status is not None and status not in FINAL:
                # run again since it ended (a retry): its followers wait for that run's end
                await self.redis.zrem(key, leader)
                continue
            for follower in sorted(str(f) for f in followers):
                owner = await self.redis.hget(self.keys.job(follower), "userId")
                if owner is None:
                    continue
                if status == "completed" and owner == leader_owner:
                    event: JobCompletedEvent | JobFailedEvent = JobCompletedEvent(
                        job_id=follower, queue=self.name, user_id=owner, result=json.loads(result) if result else None)
                elif status is None or owner != leader_owner:  # its record gone, or the id another user's now
                    event = JobFailedEvent(job_id=follower, queue=self.name, user_id=owner, status="failed",
                                           error=f"the run it followed ({leader}) is gone")
                else:
                    event = JobFailedEvent(job_id=follower, queue=self.name, user_id=owner, status=status,
                                           error=f"the run it followed ({leader}) ended {status}: {error or status}")
                n += bool(await self.lifecycle.finish(event))
            await Batch(self.redis).add("delete", self.keys.followers(leader)).add("zrem", key, leader).execute()
        return n

    async def backlog(self, ahead_s: float = 0.0) -> int:
        """Jobs ready to run now (waiting + prioritized) and delayed ones (a later start, a retry's
        backoff) due within `ahead_s`; 0 while the queue is paused. One round trip.

        Only a take (BullMQ's moveToActive) promotes a due delayed job, and the scheduler takes
        only with a free worker: so due ones count here, or a queue whose workers are all gone
        would start none for them and they would wait for the next job added.
        """
        batch = _count_ready(self.scripts, Batch(self.redis))
        due_ms = round((time.time() + max(ahead_s, 0.0)) * 1000)
        # BullMQ scores a delayed job timestamp_ms * 0x1000 + a counter (its promoteDelayedJobs' bound)
        batch.add("zcount", self.scripts.keys["delayed"], 0, (due_ms + 1) * 0x1000 - 1)
        wait, prio, paused, due = await batch.execute()
        return _ready(wait, prio, paused) + (0 if paused else int(due))

    # ------------------------------------------------------------ maintenance
    def start_maintenance(self) -> None:
        """Start background lock renewal, stalled-job checks and the worker name's presence."""
        self.locks.start()

    async def next_runs_made(self) -> None:
        """Wait until the next runs of the job schedulers whose jobs were taken are made."""
        if self._iterations:
            await asyncio.gather(*self._iterations, return_exceptions=True)

    async def close(self) -> None:
        """Stop background tasks (held jobs keep their locks until they expire); the job
        schedulers' next runs being made are made first."""
        await self.next_runs_made()
        await self.locks.close()


def _carrier(opts: dict[str, Any]) -> str | None:
    """A job's trace carrier: BullMQ's `tm` (as Node BullMQ stores `telemetry.metadata`), or the
    undecoded form."""
    tm = opts.get("tm")
    if tm is None and isinstance(opts.get("telemetry"), dict):
        tm = opts["telemetry"].get("metadata")
    return tm if isinstance(tm, str) and len(tm) <= 1024 else None


def _image_fields(queue: str) -> list[str]:
    """The wire names of a queue's image fields (none for a queue the table does not know)."""
    q = QUEUE_TABLE.get(queue)
    return [q.payload.model_fields[n].alias or n for n in q.image_fields] if q is not None else []


def _image_values(data: dict[str, Any], fields: list[str]) -> list[tuple[str, int, str]]:
    """(field, index (-1: not a list), reference) of each image a job's data names."""
    out: list[tuple[str, int, str]] = []
    for field in fields:
        value = data.get(field)
        if isinstance(value, str):
            out.append((field, -1, value))
        elif isinstance(value, list):
            out.extend((field, i, v) for i, v in enumerate(value) if isinstance(v, str))
    return out


def _put(data: dict[str, Any], field: str, index: int, value: str) -> None:
    if index < 0:
        data[field] = value
    else:
        data[field][index] = value
