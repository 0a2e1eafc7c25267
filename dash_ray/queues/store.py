"""JobStore: the producer side of the durable queues (add, get, list, cancel, retry, pause)."""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from bullmq import Job as BullJob
from bullmq import Queue as BullQueue
from redis.asyncio import Redis

from dash_ray.errors import (
    DashError,
    Forbidden,
    InvalidJobState,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    QuotaExceeded,
    RateLimited,
    UnknownQueue,
)
from dash_ray.models.base import is_lookup_id
from dash_ray.models.events import JobFailedEvent, JobProgressEvent
from dash_ray.models.options import JobOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.queues import QUEUES, parse_options, parse_payload
from dash_ray.models.status import Status, derive, guess_bull_state, is_failure, is_final
from dash_ray.models.views import JobList, JobView, SubmitResult
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.eta import estimate, left_from_progress
from dash_ray.queues.events import EventBus
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import BullAddRecorder, Created, Lifecycle, Quota, Retention
from dash_ray.queues.lua import POSITION

__all__ = ["MAX_WEIGHT", "MIN_WEIGHT", "JobStore", "bull_opts"]

MIN_WEIGHT, MAX_WEIGHT = 0.01, 100.0  # a user's fair-share weight is kept within these

log = logging.getLogger(__name__)

Validator = Callable[[JobPayload], None]


def bull_opts(job_id: str, opts: JobOptions, attempts: int, keep_completed: int, keep_failed: int,
              keep_s: int = 7 * 24 * 3600) -> dict[str, Any]:
    """BullMQ job options for our options (BullMQ's names and units: milliseconds). Finished
    jobs are removed by count and by age (`keep_s`, the life of our records), so BullMQ's job
    and our record of it go away together."""
    out: dict[str, Any] = {
        "jobId": job_id,
        "priority": opts.priority,
        "attempts": attempts,
        "backoff": {"type": opts.backoff.type, "delay": int(opts.backoff.delay_s * 1000)},
        "removeOnComplete": {"count": keep_completed, "age": keep_s},
        "removeOnFail": {"count": keep_failed, "age": keep_s},
    }
    if opts.delay_s:
        out["delay"] = int(opts.delay_s * 1000)
    if opts.timeout_s:
        out["timeoutS"] = opts.timeout_s  # ours: BullMQ keeps unknown options and ignores them
    return out


def _digest(data: dict[str, Any]) -> tuple[str, int]:
    """A payload's digest (for idempotent adds) and its size in bytes (what it keeps in Redis)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32], len(raw)


ETA_CACHE_S = 1.0  # a waiting job's ETA is computed at most this often per replica (at the same place)


def _refusal(what: str, limit: int, used: int) -> DashError:
    """The error for a quota `create` refused."""
    if what == "open":
        return RateLimited(f"too many unfinished jobs (limit {limit}, DASH_MAX_WAITING_PER_USER); wait for some "
                           "to finish", retry_after_s=5)
    if what == "high":
        return RateLimited(f"at most {limit} unfinished priority-1 training job(s) per user "
                           "(DASH_HIGH_PRIORITY_PER_USER); submit this one at priority 2, or wait", retry_after_s=30)
    return QuotaExceeded(f"your jobs keep {used} bytes in the queue's store; this one would pass the limit of "
                         f"{limit} (DASH_MAX_BYTES_PER_USER): wait for finished jobs to expire, or send large "
                         "images as uploads (POST /v1/uploads)")


def _f(value: str | None) -> float | None:
    return float(value) if value not in (None, "", "0") else None


class JobStore:
    """Durable jobs on Redis in BullMQ's layout, plus our per-job state and history index."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "bull",
        keep_completed: int = 1000,
        keep_failed: int = 5000,
        default_attempts: int = 3,
        finished_ttl_s: int = 7 * 24 * 3600,
        events_per_job: int = 1000,
        user_history_max: int = 10_000,
        queues: Iterable[str] = QUEUES,
        validate: Validator | None = None,
        fair_share: bool = True,
        user_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.redis = redis
        self.fair_share = fair_share  # jobs of one priority taken round-robin across users (by weight)
        self.user_weights = dict(user_weights or {})
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.finished_ttl_s = finished_ttl_s
        self.default_attempts = default_attempts
        self.queue_names = tuple(queues)
        self.validate = validate
        self.bus = EventBus(redis, self.keys)
        self.lifecycle = Lifecycle(redis, self.keys, Retention(
            events_per_job=events_per_job, finished_ttl_s=finished_ttl_s,
            keep_finished=keep_completed + keep_failed, history_max=user_history_max,
        ))
        self._position: Any = redis.register_script(POSITION)  # called with a Batch as its client too
        register(self._position)
        self._queues: dict[str, BullQueue] = {}
        self._etas: dict[tuple[str, str, int], tuple[float, tuple[float, float] | None]] = {}

    def queue(self, name: str) -> BullQueue:
        """The BullMQ queue object of `name` (sharing our Redis client)."""
        if name not in self.queue_names:
            raise UnknownQueue(name)
        q = self._queues.get(name)
        if q is None:
            q = BullQueue(name, {"connection": self.redis, "prefix": self.prefix})
            register(*q.scripts.commands.values())
            self._queues[name] = q
        return q

    # ------------------------------------------------------------------ add
    async def add(
        self,
        queue: str,
        data: dict[str, Any] | JobPayload,
        options: dict[str, Any] | JobOptions | None = None,
        user_id: str | None = None,
        weight: float | None = None,
        quota: Quota | None = None,
    ) -> SubmitResult:
        """Add a job; idempotent on its id (same payload -> the existing job, else JobConflict).
        `weight`: the owner's share in fair share (else DASH_USER_WEIGHTS', else 1). `quota`: the
        owner's limits, taken atomically with the job (RateLimited / QuotaExceeded when over)."""
        bq = self.queue(queue)
        payload = data if isinstance(data, JobPayload) else parse_payload(queue, data, allow_test_only=True)
        opts = parse_options(options)
        owner = payload.user_id or user_id
        if payload.user_id and user_id and payload.user_id != user_id:
            raise Forbidden("userId in the payload does not match the caller", field="userId")
        if not owner:
            raise InvalidPayload("invalid payload: userId: required", errors=[{"field": "userId", "message": "required"}])
        given = payload.get_id()
        if given and opts.job_id and given != opts.job_id:
            raise InvalidPayload(
                f"invalid payload: {payload.id_field} and options.jobId differ",
                errors=[{"field": "options.jobId", "message": f"must equal the payload's {payload.id_field}"}],
            )
        job_id = given or opts.job_id or uuid.uuid4().hex
        payload = payload.with_ids(job_id, owner)
        if self.validate:
            self.validate(payload)
        wire = payload.wire(exclude_none=True)
        digest, size = _digest(wire)
        if given or opts.job_id:  # a client-chosen id: an earlier job may hold it
            found = await self.redis.hmget(self.keys.job(job_id), "queue", "digest", "status", "userId")
            if found[1]:
                return await self._existing(job_id, queue, digest, owner,
                                            Created(0, None, *(str(x or "") for x in found)))
        attempts = opts.attempts or self.default_attempts
        bjob = BullJob(bq, queue, wire, bull_opts(job_id, opts, attempts, self.keep_completed, self.keep_failed,
                                                            self.finished_ttl_s))
        event = JobProgressEvent(
            job_id=job_id, queue=queue, user_id=owner,
            status="delayed" if opts.delay_s else "waiting", progress=0,
            message=f"delayed {opts.delay_s:g}s" if opts.delay_s else "waiting",
        )
        now_ms = int(time.time() * 1000)
        recorder = BullAddRecorder(bq.scripts.commands)
        await bq.scripts.addJob(bjob, recorder)
        assert recorder.call is not None
        hook = (opts.webhook.url, [str(e) for e in opts.webhook.events]) if opts.webhook else None
        fair = None
        if self.fair_share:
            share = weight if weight is not None else self.user_weights.get(owner, 1.0)
            fair = (opts.priority, 1.0 / min(max(share, MIN_WEIGHT), MAX_WEIGHT))
        made = await self.lifecycle.create(event, recorder.call, digest=digest, created_ms=now_ms,
                                           position=not opts.delay_s, hook=hook, fair=fair, quota=quota, size=size)
        if made.refused:
            raise _refusal(*made.refused)
        if not made.created:  # the same id was added concurrently, or BullMQ holds it without a record
            return await self._existing(job_id, queue, digest, owner, made)
        view = JobView(
            id=job_id, queue=queue, user_id=owner, status=event.status, message=event.message,
            data=wire, attempts=attempts, priority=opts.priority, created_at=now_ms / 1000,
            seq=made.seq, queue_position=made.position,
        )
        return SubmitResult(job=view, created=True)

    async def _existing(self, job_id: str, queue: str, digest: str, owner: str, found: Created) -> SubmitResult:
        """An add whose id a job holds already: that job (same queue and payload) or JobConflict.
        A job of another user's, or a BullMQ job with no record of ours (a producer's, or one
        whose record expired first), is a conflict that says nothing about that job."""
        if found.owner != owner or not found.digest:
            raise JobConflict(job_id, "this id is taken; choose another")
        if found.queue != queue:
            raise JobConflict(job_id, f"a job with this id exists in queue {found.queue!r}")
        if found.digest != digest:
            raise JobConflict(job_id)
        return SubmitResult(job=await self.get(job_id), created=False)

    # ------------------------------------------------------------------ read
    async def logs(self, job_id: str, queue: str, limit: int = 1000) -> list[str]:
        """The newest `limit` lines of a job's log (BullMQ's job log: its workers' lines too)."""
        return [x.decode() if isinstance(x, bytes) else x
                for x in await self.redis.lrange(self.keys.bull_logs(queue, job_id), -limit, -1)]

    async def find_queue(self, job_id: str) -> str | None:
        """The queue of a job: from our hash, else by looking in each queue (plain BullMQ jobs)."""
        if not is_lookup_id(job_id):
            return None
        q = await self.redis.hget(self.keys.job(job_id), "queue")
        if q:
            return str(q)
        pipe = self.redis.pipeline(transaction=False)
        for name in self.queue_names:
            pipe.type(self.keys.bull(name, job_id))
        for name, kind in zip(self.queue_names, await pipe.execute(), strict=True):
            if kind == "hash":
                return name
        return None

    async def get(self, job_id: str) -> JobView:
        """The job's view; raises JobNotFound."""
        queue = await self.find_queue(job_id)
        if queue is None:
            raise JobNotFound(job_id)
        views = await self._views([(job_id, queue)], with_state=True)
        if not views:
            raise JobNotFound(job_id)
        return await self._with_eta(views[0])

    async def _with_eta(self, view: JobView) -> JobView:
        """The view with its ETA: a waiting job's from the queue (see queues/eta.py), a running
        one's from its own progress so far."""
        if view.status == Status.WAITING and view.queue_position:
            key = (view.queue, view.id, view.queue_position)
            now = time.monotonic()
            hit = self._etas.get(key)
            if hit is None or now - hit[0] > ETA_CACHE_S:
                # shared by every GET, subscribe and socket refresh of this job on this replica
                if len(self._etas) >= 10_000:
                    self._etas.clear()
                hit = self._etas[key] = (now, await estimate(self.redis, self.keys, view.queue, view.id, view.data,
                                                             view.queue_position))
            if hit[1] is not None:
                view.eta_s, view.finish_eta_s = hit[1]
        elif view.status == Status.ACTIVE and view.started_at:
            left = left_from_progress(time.time() - view.started_at, view.progress)
            if left is not None:
                view.eta_s = view.finish_eta_s = round(left, 2)
        return view

    async def _views(self, ids: list[tuple[str, str]], with_state: bool, with_data: bool = True) -> list[JobView]:
        if not ids:
            return []
        k = self.keys
        batch = Batch(self.redis)
        for job_id, queue in ids:
            batch.add("hgetall", k.job(job_id))
            batch.add("hgetall", k.bull(queue, job_id))
            if with_state:
                bq = self.queue(queue)
                await bq.scripts.commands["getStateV2"](
                    keys=bq.scripts.getKeys(["completed", "failed", "delayed", "active", "wait",
                                             "paused", "waiting-children", "prioritized"]),
                    args=[job_id, k.bull(queue, job_id)], client=batch,
                )
                await self._position(keys=[k.bull(queue, "wait"), k.bull(queue, "prioritized")],
                                     args=[job_id], client=batch)
        raw = await batch.execute()
        step = 4 if with_state else 2
        out = []
        for i, (job_id, queue) in enumerate(ids):
            ours, bull = raw[i * step], raw[i * step + 1]
            state = raw[i * step + 2] if with_state else None
            pos = raw[i * step + 3] if with_state else None
            if not ours and not bull:
                continue
            out.append(self._view(job_id, queue, ours, bull, state, pos, with_data))
        return out

    def _view(self, job_id: str, queue: str, ours: dict[str, str], bull: dict[str, str],
              state: str | None, pos: Any, with_data: bool = True) -> JobView:
        attempts_made = int(bull.get("atm") or bull.get("attemptsMade") or 0)
        mine = ours.get("status")
        if state is None and bull:  # a list: guessed from the hashes (see models/status.py)
            state = guess_bull_state(bull, mine)
        status = derive(state, mine, attempts_made)
        # the payload is parsed only when it is shown (or names the owner of a job we adopted)
        data = json.loads(bull["data"]) if bull.get("data") and (with_data or not ours.get("userId")) else {}
        opts = json.loads(bull["opts"]) if bull.get("opts") else {}
        result: Any = None
        if ours.get("result"):
            result = json.loads(ours["result"])
        elif bull.get("returnvalue"):
            result = json.loads(bull["returnvalue"])
        # the last attempt's error: shown while it is retried, and when the job failed
        error = ours.get("error") or bull.get("failedReason") or None
        progress = float(ours.get("progress") or 0)
        if status == Status.COMPLETED:
            progress = 100.0
        return JobView(
            id=job_id,
            queue=queue,
            user_id=ours.get("userId") or data.get("userId"),
            status=status,
            progress=progress,
            message=ours.get("message", ""),
            data=data,
            result=result,
            error=error if is_failure(status) or status == Status.RETRYING else None,
            attempts_made=attempts_made,
            attempts=int(opts.get("attempts") or 1),
            priority=int(bull.get("priority") or 0),
            queue_position=int(pos) if pos and int(pos) > 0 and status == Status.WAITING else None,
            created_at=(_f(bull.get("timestamp")) or _f(ours.get("created")) or 0) / 1000 or None,
            started_at=(_f(bull.get("processedOn")) or 0) / 1000 or _f(ours.get("started")),
            finished_at=(_f(bull.get("finishedOn")) or 0) / 1000 or _f(ours.get("finished")),
            seq=int(ours.get("seq") or 0),
        )

    async def list(
        self,
        user_id: str | None,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        with_data: bool = True,
    ) -> JobList:
        """A user's jobs (`user_id` "*": every user's), newest first, optionally by queue and
        status; `cursor` pages on; `with_data` False leaves each payload out (and unparsed)."""
        if queue is not None and queue not in self.queue_names:
            raise UnknownQueue(queue)
        if user_id is None:
            raise InvalidPayload("user is required to list jobs")
        limit = max(1, min(limit, 200))
        key = self.keys.recent if user_id == "*" else self.keys.user_jobs(user_id)
        try:
            top = f"({int(cursor)}" if cursor else "+inf"
        except ValueError:
            raise InvalidPayload("invalid cursor", errors=[{"field": "cursor", "message": "invalid"}]) from None
        found: list[JobView] = []
        next_cursor: str | None = None
        scanned = 0
        while len(found) < limit and scanned < 50 * limit:
            batch = cast(list[tuple[str, float]], await self.redis.zrevrangebyscore(
                key, top, "-inf", start=0, num=max(limit, 50), withscores=True))
            if not batch:
                next_cursor = None
                break
            scanned += len(batch)
            pipe = self.redis.pipeline(transaction=False)
            for member, _score in batch:
                pipe.hget(self.keys.job(member), "queue")
            queues = await pipe.execute()
            ids = [(m, q) for (m, _s), q in zip(batch, queues, strict=True) if q]
            views = {v.id: v for v in await self._views(ids, with_state=False, with_data=with_data)}
            # An index entry is stale when its job is gone, or when its id now names a job of
            # someone else (this user's job expired and another user took the id): the owner
            # of every job listed is checked here, the one place every history read goes through.
            stale = {m for m, _s in batch if m not in views or (user_id != "*" and views[m].user_id != user_id)}
            if stale:
                await self.redis.zrem(key, *stale)
            for member, score in batch:
                top = f"({int(score)}"
                v = views.get(member)
                if v is None or member in stale or (queue and v.queue != queue) or (status and v.status != status):
                    continue
                found.append(v)
                if len(found) >= limit:
                    next_cursor = str(int(score))
                    break
            if len(batch) < max(limit, 50):
                break
        if next_cursor and not await self.redis.zcount(key, "-inf", f"({next_cursor}"):
            next_cursor = None
        return JobList(jobs=found, next_cursor=next_cursor)

    async def open_jobs(self, user_id: str) -> int:
        """How many of the user's jobs are not finished (waiting, delayed or running)."""
        return int(await self.redis.scard(self.keys.waiting_count(user_id)))

    async def usage(self, user_id: str) -> tuple[int, int]:
        """What a user keeps in Redis now: (bytes, unfinished jobs)."""
        return await self.lifecycle.usage(user_id)

    async def top_usage(self, n: int = 20) -> builtins.list[tuple[str, int]]:
        """The `n` users who keep the most bytes in Redis, with their bytes."""
        rows = cast(builtins.list[tuple[Any, float]],
                    await self.redis.zrevrange(self.keys.usage, 0, n - 1, withscores=True))
        return [(m.decode() if isinstance(m, bytes) else str(m), int(score)) for m, score in rows]

    # ------------------------------------------------------------------ control
    async def cancel(self, job_id: str) -> JobView:
        """Cancel: a waiting or delayed job is removed; a running one is told to stop."""
        view = await self.get(job_id)
        if is_final(view.status):
            raise InvalidJobState(job_id, view.status, "cancel")
        bq = self.queue(view.queue)
        if view.status != Status.ACTIVE:
            removed = await bq.backend.remove(job_id, True)
            if removed:
                await self.lifecycle.finish(JobFailedEvent(
                    job_id=job_id, queue=view.queue, user_id=view.user_id, error="cancelled", status=Status.CANCELLED.value,
                ))
                return await self.get(job_id)
            # It became active in between: cancel it as a running job.
        await self.lifecycle.cancel(job_id)
        return await self.get(job_id)

    async def retry(self, job_id: str, quota: Quota | None = None) -> JobView:
        """Run a failed (or cancelled-while-running) job again, with fresh attempts. `quota`:
        the owner's limits, taken atomically before it is requeued, as for a new job."""
        view = await self.get(job_id)
        if not is_failure(view.status):
            raise InvalidJobState(job_id, view.status, "retry")
        bq = self.queue(view.queue)
        bjob = await BullJob.fromId(bq, job_id)
        if bjob is None:
            raise InvalidJobState(job_id, view.status, "retry (the job was removed)")
        owner = view.user_id or "_"
        if quota is not None:
            refused = await self.lifecycle.reopen(job_id, owner, quota, _digest(view.data)[1])
            if refused:
                raise _refusal(*refused)
        await self.redis.delete(self.keys.cancel(job_id))
        try:
            await bjob.retry("failed", {"resetAttemptsMade": True, "resetAttemptsStarted": True})
        except Exception as exc:
            if quota is not None:  # it does not run again: it holds no place among the unfinished
                await self.redis.srem(self.keys.waiting_count(owner), job_id)
            raise InvalidJobState(job_id, view.status, f"retry ({exc})") from None
        await self.lifecycle.wait_again(job_id, view.queue, view.user_id, "retry requested")
        return await self.get(job_id)

    async def pause(self, queue: str) -> None:
        """Stop handing out this queue's jobs (running ones finish)."""
        await self.queue(queue).pause()

    async def resume(self, queue: str) -> None:
        """Hand out this queue's jobs again."""
        await self.queue(queue).resume()

    async def is_paused(self, queue: str) -> bool:
        """True while the queue is paused."""
        return bool(await self.queue(queue).isPaused())

    async def durations(self, queue: str) -> dict[str, str]:
        """The queue's job-duration histogram (bucket counts and sum) as kept by its consumer."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.metrics(queue)))

    async def sizing(self, queue: str) -> tuple[float | None, dict[str, tuple[str, int]]]:
        """The GPU share a queue's consumer last chose for its workers (None: not reported) and
        the measured peak memory by job shape."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.capacity(queue), "gpuFraction")
        pipe.hgetall(self.keys.memory(queue))
        fraction, raw = await pipe.execute()
        peaks = {}
        for k, v in (raw or {}).items():
            kind, _, n = (v.decode() if isinstance(v, bytes) else str(v)).partition(":")
            if n.isdigit():
                peaks[k.decode() if isinstance(k, bytes) else str(k)] = (kind, int(n))
        return (float(fraction) if fraction else None), peaks

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state: waiting (incl. prioritized), delayed, active, completed, failed."""
        raw = await self.queue(queue).backend.getCounts(
            ["wait", "paused", "prioritized", "delayed", "active", "completed", "failed"]
        )
        wait, paused, prio, delayed, active, completed, failed = (int(x) for x in raw)
        return {
            "waiting": wait + paused + prio,
            "delayed": delayed,
            "active": active,
            "completed": completed,
            "failed": failed,
        }
