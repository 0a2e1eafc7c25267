"""Producer: the writes a job's producer makes, through `Lifecycle`: add (BullMQ's add and our
record in one script, idempotent on the job's id, with the owner's quota and fair share), cancel
and retry. Also BullMQ's options for ours (`bull_opts`), the id and owner rules of an add
(`identify`) and the error of a refused quota (`refusal`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from bullmq import Job as BullJob
from redis.asyncio import Redis

from dash_ray import tracing
from dash_ray.errors import (
    DashError,
    Forbidden,
    InvalidJobState,
    InvalidPayload,
    JobConflict,
    QuotaExceeded,
    RateLimited,
)
from dash_ray.models.events import JobFailedEvent, JobProgressEvent
from dash_ray.models.options import MAX_DELAY_S, JobOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.queues import parse_options, parse_payload
from dash_ray.models.status import CANCELLING, JobStatus, Status, is_failure, is_final
from dash_ray.models.views import JobView, SubmitResult
from dash_ray.queues.batch import Batch
from dash_ray.queues.control import QueueControl
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import After, BullAddRecorder, Created, Lifecycle, Quota, Rate
from dash_ray.queues.lua import MOVE
from dash_ray.queues.reader import JobReader, flow_parent

__all__ = ["MAX_WEIGHT", "MIN_WEIGHT", "Producer", "ProducerOptions", "bull_opts", "cache_digest", "digest", "identify",
           "refusal"]

MIN_WEIGHT, MAX_WEIGHT = 0.01, 100.0  # a user's fair-share weight is kept within these
SCHEDULED_NEXT = -8  # BullMQ's removeJob: the job is its job scheduler's next run (not removed)
MAX_START_BY_MS = MAX_DELAY_S * 1000  # a deadline to start is at most this far from the submit

Validator = Callable[..., None]  # (payload, waits=ids of the jobs it waits for) -> raises InvalidPayload


def bull_opts(job_id: str, opts: JobOptions, attempts: int, keep_completed: int, keep_failed: int,
              keep_s: int = 7 * 24 * 3600, start_by_ms: int | None = None) -> dict[str, Any]:
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
    if start_by_ms is not None:
        out["startBy"] = start_by_ms  # ours: the deadline to start by, ms
    return out


def digest(data: dict[str, Any]) -> tuple[str, int]:
    """A payload's digest (for idempotent adds) and its size in bytes (what it keeps in Redis)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32], len(raw)


def cache_digest(queue: str, payload: JobPayload, content: str = "") -> str:
    """The identity of a repeatable payload's result: its queue and fields (its id and owner
    aside) and what its inputs hold (`content`: a LoRA's digest)."""
    fields = payload.model_dump(mode="json", exclude={"user_id", payload.id_field})
    raw = json.dumps([queue, fields, content], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:40]


def refusal(what: str, limit: int, used: int, rate: Rate | None = None) -> DashError:
    """The error for a quota `create` refused (`rate`: the submission rate it counted; `used` is
    then the ms until a place frees)."""
    if what == "rate" and rate is not None:
        return rate.refused(used)
    if what == "open":
        return RateLimited(f"too many unfinished jobs (limit {limit}, DASH_MAX_WAITING_PER_USER); wait for some "
                           "to finish", retry_after_s=5)
    if what == "high":
        return RateLimited(f"at most {limit} unfinished priority-1 training job(s) per user "
                           "(DASH_HIGH_PRIORITY_PER_USER); submit this one at priority 2, or wait", retry_after_s=30)
    return QuotaExceeded(f"your jobs keep {used} bytes in the queue's store; this one would pass the limit of "
                         f"{limit} (DASH_MAX_BYTES_PER_USER): wait for finished jobs to expire, or send large "
                         "images as uploads (POST /v1/uploads)")


def identify(payload: JobPayload, opts: JobOptions, user_id: str | None) -> tuple[str, str, bool]:
    """(job id, owner, whether the client chose the id) of an add: the owner is the payload's
    `userId` or the caller's (they must agree); the id the payload's, or options.jobId (they must
    agree), or a new one."""
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
    return given or opts.job_id or uuid.uuid4().hex, owner, bool(given or opts.job_id)


@dataclass(frozen=True)
class ProducerOptions:
    """A deployment's settings for adds: retention (BullMQ's finished jobs kept, by count and
    age), default attempts, fair share (and users' weights) and a payload check."""

    keep_completed: int = 1000
    keep_failed: int = 5000
    finished_ttl_s: int = 7 * 24 * 3600
    default_attempts: int = 3
    fair_share: bool = True  # jobs of one priority taken round-robin across users (by weight)
    user_weights: Mapping[str, float] = field(default_factory=dict)
    validate: Validator | None = None
    start_by_s: Mapping[str, float] = field(default_factory=dict)  # queue -> default deadline to start, s
    cache_results: bool = False  # repeatable payloads answered by the owner's earlier run (options.cache's default)
    allow_cache: bool = True  # false: the cache is off, whatever a submit asks
    content: Callable[[JobPayload], str] | None = None  # what a payload's inputs hold (a LoRA's digest), for the cache
    fair_half_life_s: float = 0.0  # fair share's memory of the work a user was served (0: none)

    def fair(self, priority: int, owner: str, weight: float | None) -> tuple[int, float] | None:
        """(priority, 1 / the owner's weight) to place a job by fair share; None: FIFO. `weight`:
        the owner's share (else DASH_USER_WEIGHTS', else 1), kept within MIN_WEIGHT..MAX_WEIGHT."""
        if not self.fair_share:
            return None
        share = weight if weight is not None else self.user_weights.get(owner, 1.0)
        return priority, 1.0 / min(max(share, MIN_WEIGHT), MAX_WEIGHT)


class Producer:
    """Adds, cancels and retries jobs; reads them back through `reader`."""

    def __init__(self, redis: Redis, keys: Keys, control: QueueControl, reader: JobReader, lifecycle: Lifecycle,
                 options: ProducerOptions | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.control = control
        self.reader = reader
        self.lifecycle = lifecycle
        self.options = options or ProducerOptions()
        self._move = redis.register_script(MOVE.text(ns=keys.ns))

    async def add(
        self,
        queue: str,
        data: dict[str, Any] | JobPayload,
        options: dict[str, Any] | JobOptions | None = None,
        user_id: str | None = None,
        weight: float | None = None,
        quota: Quota | None = None,
        trace: str | None = None,
        org: str | None = None,
    ) -> SubmitResult:
        """Add a job; idempotent on its id (same payload -> the existing job, else JobConflict).
        `weight`: the owner's share in fair share (else DASH_USER_WEIGHTS', else 1). `quota`: the
        owner's limits, taken atomically with the job (RateLimited / QuotaExceeded when over)."""
        o = self.options
        bq = self.control.queue(queue)
        payload = data if isinstance(data, JobPayload) else parse_payload(queue, data, allow_test_only=True)
        opts = parse_options(options)
        job_id, owner, chosen = identify(payload, opts, user_id)
        payload = payload.with_ids(job_id, owner)
        after = await self._after(opts, owner, job_id) if opts.after else None
        if o.validate:  # (a LoRA its training job, waited for, makes: not there yet)
            o.validate(payload, waits=[j for j, q in after.jobs if q == "training"] if after else ())
        wire = payload.wire(exclude_none=True)
        dig, size = digest(wire)
        if after is not None:
            size += sum(len(j) + 3 for j in after.ids)  # its record names them
        attempts = opts.attempts or o.default_attempts
        now_ms = int(time.time() * 1000)
        start_by = opts.start_by_ms(now_ms, o.start_by_s.get(queue))
        if start_by is not None and not now_ms + int(opts.delay_s * 1000) < start_by <= now_ms + MAX_START_BY_MS:
            if chosen and (known := await self._known(job_id, queue, owner, dig)) is not None:
                return known  # the same submit again, its deadline passed since: the job it made
            raise InvalidPayload("invalid payload: options.startBy: the job could never start by then (it is past, "
                                 "or within the delay), or it is more than 30 days away",
                                 errors=[{"field": "options.startBy",
                                          "message": "must be after the submit and its delay, within 30 days"}])
        # A deadline in seconds is counted from the create, on Redis's clock (as the take reads it).
        within = opts.start_within_ms(o.start_by_s.get(queue))
        start_arg = f"+{within}" if within is not None else "" if start_by is None else str(start_by)
        cache = ""
        if opts.cache and not o.allow_cache:
            raise InvalidPayload("invalid payload: options.cache: the result cache is off here (DASH_ALLOW_CACHE)",
                                 errors=[{"field": "options.cache", "message": "the cache is off"}])
        if opts.cache and after is not None:
            raise InvalidPayload("invalid payload: options.cache: not for a job that waits for others",
                                 errors=[{"field": "options.cache", "message": "not with after"}])
        if o.allow_cache and after is None and (opts.cache or (opts.cache is None and o.cache_results)):
            if payload.repeatable():
                content = await asyncio.to_thread(o.content, payload) if o.content else ""  # (reads a file once)
                cache = cache_digest(queue, payload, content)
            elif opts.cache:
                raise InvalidPayload(
                    "invalid payload: options.cache: this payload gives another result each run (give "
                    "settings.seed; an upscale: the lanczos model on an upload)",
                    errors=[{"field": "options.cache", "message": "the payload is not repeatable"}])
        bull = bull_opts(job_id, opts, attempts, o.keep_completed, o.keep_failed, o.finished_ttl_s, start_by)
        if trace:  # its trace's carrier, where bullmq-otel keeps it (dash_ray/tracing.py)
            bull["tm"] = trace
        if org:  # the group its GPU time and share count against too (queues/ledger.py, queues/shares.py)
            bull["org"] = org
        bjob = BullJob(bq, queue, wire, bull)
        status: JobStatus = "delayed" if opts.delay_s else "waiting"
        message = f"delayed {opts.delay_s:g}s" if opts.delay_s else "waiting"
        if after is not None:
            n = len(after.jobs)
            message = f"waiting for {n} job{'s' if n > 1 else ''} first: {', '.join(after.ids)}"
        event = JobProgressEvent(job_id=job_id, queue=queue, user_id=owner, status=status, progress=0, message=message)
        recorder = BullAddRecorder(bq.scripts.commands)
        if after is not None:  # in `waiting-children` until they end (after.lua, finish.lua)
            await bq.scripts.addParentJob(bjob, recorder)
        else:
            await bq.scripts.addJob(bjob, recorder)
        assert recorder.call is not None
        hook = (opts.webhook.url, [str(e) for e in opts.webhook.events]) if opts.webhook else None
        made = await self._create(trace, queue, event, recorder.call, digest=dig, created_ms=now_ms,
                                           position=not opts.delay_s and after is None, hook=hook,
                                           fair=o.fair(opts.priority, owner, weight), quota=quota, size=size,
                                           start_by=start_arg, cache=cache,
                                           data=json.dumps(wire, separators=(",", ":")) if cache else "", after=after,
                                           half_life_s=o.fair_half_life_s)
        if made.refused:
            raise refusal(*made.refused, rate=quota.rate if quota else None)
        if made.cached:  # the owner's completed run of this payload answers: nothing was made
            view = await self.reader.get(made.cached)
            view.cached = True
            return SubmitResult(job=view, created=False)
        if not made.created:  # an earlier job holds the id (a client-chosen one), or BullMQ does without a record
            return await self._existing(job_id, queue, dig, owner, made)
        # Made from values checked above (the payload, options, its new event), not validated again.
        view = JobView.model_construct(
            id=job_id, queue=queue, user_id=owner, status=status, message=event.message,
            data=wire, attempts=attempts, priority=opts.priority, created_at=now_ms / 1000,
            seq=made.seq, queue_position=made.position, same_as=made.follows or None,
            after=after.ids if after is not None else None,
        )
        return SubmitResult.model_construct(job=view, created=True)

    async def _create(self, trace: str | None, queue: str, event: JobProgressEvent, bull: Any, **kw: Any) -> Created:
        """The lifecycle's create, in a span of its own when the job is traced."""
        if not trace or tracing.tracer() is None:
            return await self.lifecycle.create(event, bull, **kw)
        with tracing.span(f"create {queue}", **{"dash.job_id": event.job_id}):
            return await self.lifecycle.create(event, bull, **kw)

    async def _after(self, opts: JobOptions, owner: str, job_id: str) -> After:
        """The jobs `options.after` names, each a job of the owner's (its queue from its record);
        InvalidPayload for one that is not (any other user's looks as if it did not exist)."""
        ids = list(opts.after or ())
        batch = Batch(self.redis)
        for other in ids:
            batch.add("hmget", self.keys.job(other), "queue", "userId", "status")
        jobs: list[tuple[str, str]] = []
        for other, (queue, user, status) in zip(ids, await batch.execute(), strict=True):
            if queue is None or user != owner or queue not in self.control.names or other == job_id:
                raise InvalidPayload(f"invalid payload: options.after: no job {other} of yours",
                                     errors=[{"field": "options.after", "message": f"no job {other} of yours"}])
            if opts.after_failure == "fail" and is_final(status) and status != Status.COMPLETED:
                raise InvalidPayload(f"invalid payload: options.after: job {other} ended {status}; this job "
                                     "would fail unrun (afterFailure: ignore runs it anyway)",
                                     errors=[{"field": "options.after", "message": f"job {other} ended {status}"}])
            jobs.append((str(other), str(queue)))
        return After(tuple(jobs), opts.after_failure)

    async def _known(self, job_id: str, queue: str, owner: str, dig: str) -> SubmitResult | None:
        """The job an earlier submit of this id, queue, owner and payload made, if any."""
        found_queue, found_digest, found_owner = await self.redis.hmget(self.keys.job(job_id), "queue", "digest",
                                                                         "userId")
        if (found_queue, found_digest, found_owner) != (queue, dig, owner):
            return None
        return SubmitResult(job=await self.reader.get(job_id), created=False)

    async def _existing(self, job_id: str, queue: str, dig: str, owner: str, found: Created) -> SubmitResult:
        """An add whose id a job holds already: that job (same queue and payload) or JobConflict.
        A job of another user's, or a BullMQ job with no record of ours (a producer's, or one
        whose record expired first), is a conflict that says nothing about that job."""
        if found.owner != owner or not found.digest:
            raise JobConflict(job_id, "this id is taken; choose another")
        if found.queue != queue:
            raise JobConflict(job_id, f"a job with this id exists in queue {found.queue!r}")
        if found.digest != dig:
            raise JobConflict(job_id)
        return SubmitResult(job=await self.reader.get(job_id), created=False)

    async def cancel(self, job_id: str) -> JobView:
        """Cancel: a waiting or delayed job is removed; a running one is told to stop."""
        view = await self.reader.get(job_id)
        if is_final(view.status):
            raise InvalidJobState(job_id, view.status, "cancel")
        bq = self.control.queue(view.queue)
        if view.same_as:  # it follows another's run, with none of its own: it ends alone
            await self.lifecycle.finish(JobFailedEvent(job_id=job_id, queue=view.queue, user_id=view.user_id,
                                                       error="cancelled", status=Status.CANCELLED.value))
            await self.redis.srem(self.keys.followers(view.same_as), job_id)
            return await self.reader.get(job_id)
        if view.status != Status.ACTIVE:
            # A flow's job whose failure fails the job waiting for it: cancelling it cancels that
            # job (and so the rest of its flow): left alone, BullMQ would start it without this one.
            above = flow_parent(await self.redis.hget(self.keys.bull(view.queue, job_id), "parent"), failing=True)
            if above is not None:
                with contextlib.suppress(DashError):
                    await self.cancel(above)
                return await self.reader.get(job_id)
            # A flow's parent goes with the jobs it waits for (BullMQ removes those not running;
            # what a job made with `after` waits for is not in BullMQ's flow keys: it stays).
            below = await self._children(view.queue, job_id)
            removed = await bq.backend.remove(job_id, True)
            if removed == SCHEDULED_NEXT:
                raise InvalidJobState(job_id, view.status, "cancel (it is its schedule's next run: delete the schedule)")
            if removed == 1:
                await self.lifecycle.finish(JobFailedEvent(
                    job_id=job_id, queue=view.queue, user_id=view.user_id, error="cancelled", status=Status.CANCELLED.value,
                ))
                for child_queue, child in below:  # each of its flow: removed with it, or told to stop
                    await self._cancel_child(child_queue, child, job_id)
                return await self.reader.get(job_id)
            if below:  # a flow's parent BullMQ would not remove (a job it waits for runs): it is told
                await self.lifecycle.cancel(job_id)  # to stop (it will, once taken), and so is each of them
                for _child_queue, child in below:
                    with contextlib.suppress(DashError):
                        await self.cancel(child)
                return await self.reader.get(job_id)
            # It became active in between: cancel it as a running job.
        await self.lifecycle.cancel(job_id)
        return await self.reader.get(job_id)

    async def _children(self, queue: str, job_id: str, depth: int = 0) -> list[tuple[str, str]]:
        """(queue, id) of the jobs a flow's parent still waits for, at any depth (BullMQ's
        `dependencies` sets: `{prefix}:{queue}:{id}` each)."""
        if depth > 8:
            return []
        out: list[tuple[str, str]] = []
        prefix = f"{self.keys.prefix}:"
        for key in sorted(await self.redis.smembers(self.keys.bull(queue, f"{job_id}:dependencies"))):
            child_queue, _, child = str(key).removeprefix(prefix).partition(":")
            if child_queue in self.control.names and child:
                out.append((child_queue, child))
                out += await self._children(child_queue, child, depth + 1)
        return out

    async def _cancel_child(self, queue: str, job_id: str, parent: str) -> None:
        """End a cancelled flow's job: gone from BullMQ with its parent (its record ends), or
        running (told to stop, as a cancel of it would)."""
        status, owner = cast(list[Any], await self.redis.hmget(self.keys.job(job_id), "status", "userId"))
        if status is None or is_final(status):
            return
        if await self.redis.exists(self.keys.bull(queue, job_id)):
            await self.lifecycle.cancel(job_id)
            return
        await self.lifecycle.finish(JobFailedEvent(job_id=job_id, queue=queue, user_id=owner, status=Status.CANCELLED.value,
                                                   error=f"cancelled: the job waiting for it ({parent}) was cancelled"))

    async def move(self, job_id: str, how: str, other: str | int | None = None) -> JobView:
        """Move a waiting job in its queue (move.lua), in one step: `front` (of the whole queue),
        `own` (first of its owner's waiting jobs of its priority), `before` (`other`, another of
        its owner's waiting jobs of that priority), or `priority` (`other`: to the back of it).
        `own` and `before` only exchange the owner's own places: no other user's job moves.
        InvalidJobState unless it is waiting; InvalidPayload for an `other` it cannot go before."""
        view = await self.reader.get(job_id)
        if view.status != Status.WAITING:
            raise InvalidJobState(job_id, view.status, "move")
        k, q = self.keys, view.queue
        keys, args = MOVE.pack(
            {"prioritized": k.bull(q, "prioritized"), "wait": k.bull(q, "wait"), "open": k.waiting_count(view.user_id or "_"),
             "bull_job": k.bull(q, job_id), "pc": k.bull(q, "pc")},
            {"job_id": job_id, "how": how, "other": "" if other is None else str(other)})
        reply = await self._move(keys=keys, args=args)
        code = int(reply[0])
        if code == 0:
            raise InvalidJobState(job_id, (await self.reader.get(job_id)).status, "move")
        if code == -1:
            raise InvalidPayload(f"before: {other!r} is not a waiting job of the same owner, queue and priority",
                                 errors=[{"field": "before", "message": "not a waiting job of the same owner and priority"}])
        if code == -2:
            raise InvalidJobState(job_id, "waiting", "reorder (a plain BullMQ job of priority 0)")
        return await self.reader.get(job_id)

    async def retry(self, job_id: str, quota: Quota | None = None) -> JobView:
        """Run a failed (or cancelled-while-running) job again, with fresh attempts. `quota`:
        the owner's limits, taken atomically before it is requeued, as for a new job."""
        view = await self.reader.get(job_id)
        if not is_failure(view.status):
            raise InvalidJobState(job_id, view.status, "retry")
        bq = self.control.queue(view.queue)
        bjob = await BullJob.fromId(bq, job_id)
        if bjob is None:
            raise InvalidJobState(job_id, view.status, "retry (the job was removed)")
        if not bjob.finishedOn:  # requeued since its view was read (a retry at the same time): that run
            return await self.reader.get(job_id)
        owner = view.user_id or "_"
        if quota is not None:
            refused = await self.lifecycle.reopen(job_id, owner, quota, digest(view.data)[1])
            if refused:
                raise refusal(*refused)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.cancel(job_id))
        # CANCELLING: left by a cancel whose final event never came; startBy: a retry, asked for
        # after the deadline to start (an expired job's), runs whenever it can.
        pipe.hdel(self.keys.job(job_id), CANCELLING, "startBy")
        pipe.zrem(self.keys.start_by(view.queue), job_id)
        if "startBy" in bjob.opts:  # BullMQ's copy of it too (the take reads it from there)
            opts = {k: v for k, v in json.loads(await self.redis.hget(self.keys.bull(view.queue, job_id), "opts")
                                                 or "{}").items() if k != "startBy"}
            pipe.hset(self.keys.bull(view.queue, job_id), "opts", json.dumps(opts, separators=(",", ":")))
        await pipe.execute()
        # It waits again before BullMQ requeues it: a take waiting on the marker may start it the
        # moment it is requeued, and its start must come after this event (and find it not final).
        await self.lifecycle.wait_again(job_id, view.queue, view.user_id, "retry requested", position=False,
                                        reopen=True)
        finished_on = str(bjob.finishedOn)
        try:
            await bjob.retry("failed", {"resetAttemptsMade": True, "resetAttemptsStarted": True})
        except Exception as exc:
            # Over again, as it was (the final event takes it out of its owner's unfinished jobs),
            # unless another retry requeued it meanwhile: BullMQ's requeue clears its finishedOn.
            ended = JobFailedEvent(job_id=job_id, queue=view.queue, user_id=view.user_id,
                                   error=view.error or view.status, status=view.status)
            if not await self.lifecycle.finish(ended, guard=finished_on):
                if await BullJob.fromId(bq, job_id) is not None:
                    return await self.reader.get(job_id)  # the other retry's run
                await self.lifecycle.finish(ended)  # gone from BullMQ: its record ends too
            raise InvalidJobState(job_id, view.status, f"retry ({exc})") from None
        return await self.reader.get(job_id)
