"""QueueConsumer: the consumer side of a durable queue (take, complete, fail, locks, stalled jobs).

It speaks BullMQ's Lua scripts directly (rather than running `bullmq.Worker`'s own loop) so
that the scheduler decides when to take a job: only when a GPU worker is free, which keeps
priority order honest, and it can chain `complete` with fetching the next job in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from bullmq import Job as BullJob
from bullmq import Queue as BullQueue
from bullmq.custom_errors import UnrecoverableError
from bullmq.redis_connection import loadScript
from bullmq.scripts import raw2NextJobData
from redis.asyncio import Redis

from dash_ray.models.events import JobCompletedEvent, JobFailedEvent
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.connection import is_transient, retry_pause
from dash_ray.queues.eta import CostBook
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Lifecycle
from dash_ray.queues.lua import EXTEND_LOCKS

__all__ = ["ActiveJob", "FailOutcome", "LockLost", "QueueConsumer"]

log = logging.getLogger(__name__)


class LockLost(Exception):
    """The job's lock was lost (it stalled and was handed out again); drop this attempt."""


@dataclass
class ActiveJob:
    """A job this consumer holds the lock of, while one attempt of it runs."""

    id: str
    queue: str
    data: dict[str, Any]
    token: str
    attempts_made: int
    attempts: int
    priority: int
    created_at: float
    bull: BullJob = field(repr=False)
    deferred_failure: str | None = None
    timeout_s: float | None = None  # the job's own run-time limit (options.timeoutS), if any
    moved_to_failed: bool = False  # fail() got past BullMQ's move (a retried fail() skips it)
    taken_at: float = field(default_factory=time.monotonic)

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.attempts_made + 1

    @property
    def user_id(self) -> str | None:
        """The job's owner, from its payload."""
        uid = self.data.get("userId")
        return str(uid) if uid is not None else None


@dataclass
class FailOutcome:
    """What a failure led to: `retrying` (after `delay_s`), `failed` or `cancelled`."""

    status: str
    delay_s: float = 0.0


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
        self.stalled_ms = int(stalled_interval_s * 1000)
        self.max_stalled_count = max_stalled_count
        self.id = consumer_id or uuid.uuid4().hex
        self.queue = BullQueue(queue, {"connection": redis, "prefix": prefix, "lockDuration": self.lock_ms})
        self.scripts = self.queue.scripts
        # BullMQ ships this script but its Python client does not load it: put back a job that never started.
        self._requeue = redis.register_script(loadScript("moveJobFromActiveToWait-9.lua"))
        self._extend = redis.register_script(EXTEND_LOCKS)
        register(*self.scripts.commands.values(), self._requeue, self._extend)
        self.held: dict[str, ActiveJob] = {}
        self._n = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False  # set by close(): the maintenance loops stop
        self._fair_cursor = 0  # where prune_fair's walk through the fair-share clocks is
        self._next_delayed_ms = 0.0
        self._renewed = True  # the last lock renewal reached Redis

    # ------------------------------------------------------------ taking
    def _token(self) -> str:
        self._n += 1
        return f"{self.id}:{self._n}"

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
        )
        self.held[job.id] = job
        return job

    async def take(self, block_s: float = 0.0, up_to: int = 1) -> list[ActiveJob]:
        """Lock the next job (priority, then FIFO; due delayed jobs promoted), waiting up to
        block_s for one; then up to `up_to - 1` more of those ready, in priority order.

        The first take also counts what is left in the queue, in the same round trip, so a
        lone job costs one round trip.
        """
        deadline = time.monotonic() + block_s
        while True:
            token = self._token()
            self._next_delayed_ms = 0.0
            batch = Batch(self.redis)
            await self._move_to_active(batch, token, round(time.time() * 1000))
            raw, *counts = await self._count_ready(batch).execute()
            job = self._active(raw, token)
            if job is not None:
                more = min(up_to - 1, self._ready(*counts))
                return [job, *await self.take_more(more)] if more > 0 else [job]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            timeout = left
            if self._next_delayed_ms:
                timeout = min(left, max(0.002, (self._next_delayed_ms - time.time() * 1000) / 1000))
            await self.wait_for_marker(timeout)

    async def _move_to_active(self, batch: Batch, token: str, now_ms: int) -> None:
        """Queue BullMQ's moveToActive (its Scripts.moveToActive's keys and arguments) on a batch."""
        keys = self.scripts.getKeys(["wait", "active", "prioritized", "events", "stalled", "limiter",
                                     "delayed", "paused", "meta", "pc", "marker"])
        opts = msgpack.packb({"token": token, "lockDuration": self.lock_ms, "limiter": None}, use_bin_type=True)
        await self.scripts.commands["moveToActive"](keys=keys, args=[self.scripts.keys[""], now_ms, opts],
                                                    client=batch)

    async def take_more(self, n: int) -> list[ActiveJob]:
        """Lock up to n more ready jobs in one round trip (no waiting); in priority order."""
        if n <= 0:
            return []
        batch = Batch(self.redis)
        tokens = [self._token() for _ in range(n)]
        now = round(time.time() * 1000)
        for token in tokens:
            await self._move_to_active(batch, token, now)
        jobs = (self._active(raw, token) for raw, token in zip(await batch.execute(), tokens, strict=True))
        return [job for job in jobs if job is not None]

    async def wait_for_marker(self, timeout_s: float) -> bool:
        """Block until BullMQ's marker says a job may be ready (or timeout); True if woken."""
        got = await self.blocking.bzpopmin(self.scripts.keys["marker"], max(timeout_s, 0.002))
        return bool(got)

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
        # Raises if Redis cannot be reached: the jobs stay held (their locks renewed) for a retry.
        replies = await batch.execute()
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
        return nxt, lost

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
        for job, code in zip(reversed(jobs), await batch.execute(), strict=True):
            self.held.pop(job.id, None)
            if isinstance(code, int) and code < 0:
                log.warning("job %s: cannot requeue (code %s)", job.id, code, extra={"job_id": job.id})
                ok = False
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
                   trace: str = "") -> FailOutcome:
        """Fail the attempt: retry per attempts/backoff, else fail (or cancel) for good; publish it.

        Raises a transient error if Redis cannot be reached: call again with the same job (the
        step that went through is not repeated); the job stays held until its failure is written.
        """
        final = cancelled or not retry or job.attempt >= job.attempts
        if not job.moved_to_failed:
            err: Exception = UnrecoverableError(error) if final else Exception(error)
            _keep_trace(job.bull, trace)
            try:
                await job.bull.moveToFailed(err, job.token)
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.held.pop(job.id, None)  # lock lost: someone else has it now
                raise LockLost(f"job {job.id}: cannot fail ({exc})") from exc
            job.moved_to_failed = True
        self.held.pop(job.id, None)  # BullMQ holds its outcome now; the event below may be retried
        if final:
            await self.lifecycle.finish(JobFailedEvent(job_id=job.id, queue=self.name, user_id=job.user_id,
                                                       error=error, status="cancelled" if cancelled else "failed"))
            return FailOutcome("cancelled" if cancelled else "failed")
        delay_s = (job.bull.delay or 0) / 1000
        when = f" in {delay_s:g}s" if delay_s else ""
        await self.lifecycle.wait_again(
            job.id, self.name, job.user_id, f"attempt {job.attempt} of {job.attempts} failed: {error}; retrying{when}",
            status="retrying", attempt=job.attempt + 1, attempts=job.attempts, position=not delay_s,
        )
        return FailOutcome("retrying", delay_s)

    # ------------------------------------------------------------ locks and stalls
    async def renew_locks(self) -> list[str]:
        """Extend the locks of all held jobs; returns the ids whose lock could not be renewed."""
        if not self.held:
            return []
        k = self.scripts.keys
        args: list[Any] = [self.keys.bull(self.name, ""), self.lock_ms]
        for job in self.held.values():
            args += [job.id, job.token]
        lost = await self._extend(keys=[k["stalled"], k["active"]], args=args)
        return [str(x) for x in (lost or [])]

    async def recover_stalled(self) -> list[str]:
        """Move jobs whose consumer died back to waiting (BullMQ's two-pass stalled check)."""
        ids = await self.scripts.moveStalledJobsToWait(self.max_stalled_count, self.stalled_ms)
        ids = [str(i) for i in (ids or [])]
        for job_id in ids:
            log.warning("job %s stalled (its consumer stopped); back to waiting", job_id,
                        extra={"job_id": job_id})
            with contextlib.suppress(Exception):
                owner = await self.redis.hget(self.keys.job(job_id), "userId")
                await self.lifecycle.wait_again(job_id, self.name, str(owner) if owner else None,
                                                "recovered after its worker stopped; waiting to run again")
        return ids

    async def adopt(self) -> int:
        """Give the jobs plain BullMQ producers added since the last call a record of ours (their
        user's history, their events); returns how many. Cheap when there are none: one script
        reads the queue's new BullMQ events and checks each added job for a record (a busy
        queue's events are read up to 20,000 a call)."""
        ids: list[str] = []
        for _ in range(20):
            found, more = await self.lifecycle.adopt_scan(self.name)
            ids += found
            if not more:
                break
        if not ids:
            return 0
        b = Batch(self.redis)
        for job_id in ids:
            b.add("hmget", self.lifecycle.keys.bull(self.name, job_id), "data", "timestamp")
            b.add("zscore", self.lifecycle.keys.bull(self.name, "delayed"), job_id)
        replies = await b.execute()
        n = 0
        for i, job_id in enumerate(ids):
            (data, stamp), delayed = replies[2 * i], replies[2 * i + 1]
            user = _user_of(data)
            if await self.lifecycle.adopt(job_id, self.name, user, delayed=delayed is not None,
                                          created_ms=int(stamp or time.time() * 1000)):
                n += 1
        return n

    async def prune_fair(self, pages: int = 10, count: int = 1000) -> int:
        """Forget the fair-share clocks of users whose next job would start at the floor anyway
        (one per user and priority that ever submitted: without this the hash only grows).
        Walks on from where the last call stopped, up to `pages` HSCAN pages; returns how many went."""
        gone = 0
        key = self.lifecycle.keys.fair(self.name)
        for _ in range(pages):
            cursor, page = await self.redis.hscan(key, self._fair_cursor, match="u:*", count=count)  # (NOVALUES: 7.4+)
            self._fair_cursor = int(cursor)
            gone += await self.lifecycle.fair_prune(self.name, [str(f) for f in page])
            if self._fair_cursor == 0:
                break
        return gone

    async def report_capacity(self, costs: CostBook, slots: int, busy: int, pending: int = 0,
                              starved_since: float = 0.0, *, gpu_fraction: float | None = None,
                              memory: dict[str, tuple[str, int]] | None = None) -> None:
        """Write this queue's workers now (and since when it has been starved: workers pending
        while jobs wait; 0 if it is not) and, if changed, its measured costs, for ETAs and GPU
        arbitration."""
        pipe = self.redis.pipeline(transaction=False)
        cap = self.lifecycle.keys.capacity(self.name)
        pipe.hset(cap, mapping={"slots": slots, "busy": busy, "pending": pending,
                                "starved": round(starved_since, 3), "ts": round(time.time(), 3)})
        if gpu_fraction is not None:
            pipe.hset(cap, "gpuFraction", gpu_fraction)
        if memory:  # the measured peaks (written when they changed)
            pipe.hset(self.lifecycle.keys.memory(self.name), mapping={k: f"{kind}:{b}" for k, (kind, b) in memory.items()})
            pipe.expire(self.lifecycle.keys.memory(self.name), 30 * 24 * 3600)
        pipe.expire(cap, 3600)
        if costs.dirty and costs.per_unit:
            pipe.hset(self.lifecycle.keys.costs(self.name), mapping={k: round(v, 6) for k, v in costs.per_unit.items()})
        await pipe.execute()
        costs.dirty = False

    async def capacities(self, queues: Iterable[str]) -> dict[str, dict[str, str]]:
        """Other queues' capacity hashes (as `report_capacity` writes them), by queue."""
        names = list(queues)
        if not names:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for q in names:
            pipe.hgetall(self.lifecycle.keys.capacity(q))
        out = {}
        for q, raw in zip(names, await pipe.execute(), strict=True):
            out[q] = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in (raw or {}).items()}
        return out

    async def preemptions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """How often each job was asked to yield its GPU."""
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(self.lifecycle.keys.job(jid), "preemptions")
        return {jid: int(v or 0) for jid, v in zip(ids, await pipe.execute(), strict=True)}

    async def ask_yield(self, job_id: str) -> None:
        """Ask a running job to yield its GPU at its next checkpoint (counted in its record)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.lifecycle.keys.yield_flag(job_id), "1", ex=6 * 3600)
        pipe.hincrby(self.lifecycle.keys.job(job_id), "preemptions", 1)
        await pipe.execute()

    async def clear_yield(self, job_id: str) -> None:
        """The job's attempt ended: it is no longer asked to yield."""
        await self.redis.delete(self.lifecycle.keys.yield_flag(job_id))

    async def backlog(self, ahead_s: float = 0.0) -> int:
        """Jobs ready to run now (waiting + prioritized) and delayed ones (a later start, a retry's
        backoff) due within `ahead_s`; 0 while the queue is paused. One round trip.

        Only a take (BullMQ's moveToActive) promotes a due delayed job, and the scheduler takes
        only with a free worker: so due ones count here, or a queue whose workers are all gone
        would start none for them and they would wait for the next job added.
        """
        batch = self._count_ready(Batch(self.redis))
        due_ms = round((time.time() + max(ahead_s, 0.0)) * 1000)
        # BullMQ scores a delayed job timestamp_ms * 0x1000 + a counter (its promoteDelayedJobs' bound)
        batch.add("zcount", self.scripts.keys["delayed"], 0, (due_ms + 1) * 0x1000 - 1)
        wait, prio, paused, due = await batch.execute()
        return self._ready(wait, prio, paused) + (0 if paused else int(due))

    def _count_ready(self, batch: Batch) -> Batch:
        """Queue the reads `_ready` needs on a batch."""
        k = self.scripts.keys
        return batch.add("llen", k["wait"]).add("zcard", k["prioritized"]).add("hexists", k["meta"], "paused")

    @staticmethod
    def _ready(wait: Any, prio: Any, paused: Any) -> int:
        """Jobs ready to run from the replies of `_count_ready`: 0 while paused."""
        return 0 if paused else int(wait) + int(prio)

    def start_maintenance(self) -> None:
        """Start background lock renewal, stalled-job checks and the worker name's presence."""
        if self._tasks:
            return
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._every(self.lock_ms / 2000, self._renew), name=f"locks-{self.name}"),
            asyncio.create_task(self._every(self.stalled_ms / 1000, self._check_stalled), name=f"stalled-{self.name}"),
            asyncio.create_task(self._every(self.stalled_ms / 1000, self._announce), name=f"presence-{self.name}"),
        ]

    async def _renew(self) -> None:
        try:
            lost = await self.renew_locks()
        except BaseException:
            self._renewed = False
            raise
        self._renewed = True
        for job_id in lost:
            log.warning("lost the lock of job %s", job_id, extra={"job_id": job_id})

    async def _announce(self) -> None:
        # The blocking connection carries the BullMQ worker name (`Queue.getWorkers()`, bull-board's
        # Workers list), but only marker waits use it, and a consumer kept busy by a backlog never
        # waits: keep it open from the start, and open it again soon after a drop.
        await self.blocking.ping()

    async def _check_stalled(self) -> None:
        # After Redis was unreachable, our own locks may have expired meanwhile: take them back
        # (the renewal retries every half second) before looking for other consumers' stalls.
        if self._renewed:
            await self.recover_stalled()

    async def _every(self, interval_s: float, fn: Any) -> None:
        while not self._closing:
            try:
                await fn()
                delay = interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    log.warning("%s on %s: Redis unavailable (%s)", getattr(fn, "__name__", fn), self.name,
                                type(exc).__name__)
                else:
                    log.exception("%s failed", getattr(fn, "__name__", fn))
                delay = min(interval_s, 0.5)  # soon again: locks may be expiring
            await retry_pause(delay)

    async def close(self) -> None:
        """Stop background tasks (held jobs keep their locks until they expire)."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []


def _user_of(raw: Any) -> str | None:
    """The `userId` of a BullMQ job's data, if it is a plausible one (a short plain string)."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return None
    user = data.get("userId") if isinstance(data, dict) else None
    if not isinstance(user, str) or not 0 < len(user) <= 128 or any(ord(c) < 32 or c == "\x1f" for c in user):
        return None
    return user
