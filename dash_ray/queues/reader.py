"""Reading jobs back: `JobReader` (one job, a user's history page, a job's log), `view_of` (the one
place a `JobView` is built from our job hash and BullMQ's) and `ViewEtas` (the ETA a view shows:
a waiting job's from its queue, cached per replica; a running one's from its own progress)."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from dash_ray.errors import InvalidPayload, JobNotFound, UnknownQueue
from dash_ray.models.base import is_lookup_id, is_user_id
from dash_ray.models.status import CANCELLING, Status, derive, guess_bull_state, is_failure
from dash_ray.models.views import JobList, JobView
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.control import QueueControl
from dash_ray.queues.eta import estimate, left_from_progress
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import POSITION

__all__ = ["ETA_CACHE_S", "JobReader", "Search", "ViewEtas", "flow_parent", "view_of"]

ETA_CACHE_S = 1.0  # a waiting job's ETA is computed at most this often per replica (at the same place)

# estimate(redis, keys, queue, job_id, data, position) -> (eta_s, finish_eta_s) or None
Estimator = Callable[[Redis, Keys, str, str, dict[str, Any], int], Awaitable[tuple[float, float] | None]]


def _f(value: str | None) -> float | None:
    return float(value) if value not in (None, "", "0") else None


def _owner_in(data: dict[str, Any]) -> str | None:
    """A payload's `userId`, if it passes the user-id rule (a plain BullMQ job may carry anything)."""
    uid = data.get("userId")
    return uid if isinstance(uid, str) and is_user_id(uid) else None


def view_of(job_id: str, queue: str, ours: dict[str, str], bull: dict[str, str],
            state: str | None, pos: Any, with_data: bool = True) -> JobView:
    """A job's view from our hash (`ours`) and BullMQ's (`bull`), BullMQ's state (None: guessed
    from the hashes, as for a list) and its place in the queue; `with_data` False leaves the
    payload unparsed (unless it must name the owner of a job we adopted)."""
    attempts_made = int(bull.get("atm") or bull.get("attemptsMade") or 0)
    mine = ours.get("status")
    if state is None and bull:  # a list: guessed from the hashes (see models/status.py)
        state = guess_bull_state(bull, mine)
    status = derive(state, mine, attempts_made, ours.get(CANCELLING))  # "1": being cancelled; "expired"
    # the payload is parsed only when it is shown (or names the owner of a job we adopted)
    raw = bull.get("data") or ours.get("data")  # (a job that follows another's run keeps its payload itself)
    data = json.loads(raw) if raw and (with_data or not ours.get("userId")) else {}
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
        user_id=ours.get("userId") or _owner_in(data),
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
        same_as=ours.get("follows") or None,
        parent_id=flow_parent(bull.get("parent")),
        after=json.loads(ours["after"]) if ours.get("after") else None,
    )


def flow_parent(raw: Any, *, failing: bool = False) -> str | None:
    """The id of the job a flow's job is for, from BullMQ's `parent` field of its hash (None if
    none); with `failing`, only when its failure fails that job (`fpof`)."""
    if not raw:
        return None
    try:
        parent = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(parent, dict) or not parent.get("id") or (failing and not parent.get("fpof")):
        return None
    return str(parent["id"])


class ViewEtas:
    """Sets a view's ETA: a waiting job's from the queue (see queues/eta.py), at most once per
    `ETA_CACHE_S` per job and place, shared by every GET, subscribe and socket refresh of it on
    this replica; a running one's from its own progress so far."""

    MAX_ENTRIES = 10_000  # then the cache starts over

    def __init__(self, redis: Redis, keys: Keys, estimator: Estimator = estimate) -> None:
        self.redis = redis
        self.keys = keys
        self.estimator = estimator
        self._etas: dict[tuple[str, str, int], tuple[float, tuple[float, float] | None]] = {}

    async def with_eta(self, view: JobView) -> JobView:
        """The view with its ETA (set in place, and returned)."""
        if view.status == Status.WAITING and view.queue_position:
            key = (view.queue, view.id, view.queue_position)
            now = time.monotonic()
            hit = self._etas.get(key)
            if hit is None or now - hit[0] > ETA_CACHE_S:
                if len(self._etas) >= self.MAX_ENTRIES:
                    self._etas.clear()
                hit = self._etas[key] = (now, await self.estimator(self.redis, self.keys, view.queue, view.id,
                                                                   view.data, view.queue_position))
            if hit[1] is not None:
                view.eta_s, view.finish_eta_s = hit[1]
        elif view.status == Status.ACTIVE and view.started_at:
            left = left_from_progress(time.time() - view.started_at, view.progress)
            if left is not None:
                view.eta_s = view.finish_eta_s = round(left, 2)
        return view


@dataclass(frozen=True)
class Search:
    """What a history search asks besides queue and status: `text` in the prompt (case-insensitive),
    an id prefix, a creation time range (Unix seconds, `since_s` inclusive, `until_s` exclusive)."""

    text: str | None = None
    id_prefix: str | None = None
    since_s: float | None = None
    until_s: float | None = None

    def matches(self, view: JobView) -> bool:
        """Whether the job is one the search asks for (its time range's start aside: see list)."""
        if self.id_prefix and not view.id.startswith(self.id_prefix):
            return False
        if self.until_s is not None and (view.created_at is None or view.created_at >= self.until_s):
            return False
        if self.text is not None:
            prompt = view.data.get("prompt") if isinstance(view.data, dict) else None
            if not isinstance(prompt, str) or self.text.casefold() not in prompt.casefold():
                return False
        return True


class JobReader:
    """Jobs read back from Redis: by id, a user's history, a job's log."""

    def __init__(self, redis: Redis, keys: Keys, control: QueueControl) -> None:
        self.redis = redis
        self.keys = keys
        self.control = control
        self.etas = ViewEtas(redis, keys)
        self._position: Any = redis.register_script(POSITION)  # called with a Batch as its client too
        register(self._position)

    async def find_queue(self, job_id: str) -> str | None:
        """The queue of a job: from our hash, else by looking in each queue (plain BullMQ jobs)."""
        if not is_lookup_id(job_id):
            return None
        q = await self.redis.hget(self.keys.job(job_id), "queue")
        if q:
            return str(q)
        pipe = self.redis.pipeline(transaction=False)
        names = self.control.names
        for name in names:
            pipe.type(self.keys.bull(name, job_id))
        for name, kind in zip(names, await pipe.execute(), strict=True):
            if kind == "hash":
                return name
        return None

    async def get(self, job_id: str) -> JobView:
        """The job's view, with its ETA; raises JobNotFound."""
        queue = await self.find_queue(job_id)
        if queue is None:
            raise JobNotFound(job_id)
        views = await self.views([(job_id, queue)], with_state=True)
        if not views:
            raise JobNotFound(job_id)
        return await self.etas.with_eta(views[0])

    async def views(self, ids: builtins.list[tuple[str, str]], with_state: bool,
                    with_data: bool = True) -> builtins.list[JobView]:
        """The views of (job id, queue) pairs, in one round trip; jobs gone are left out. With
        `with_state`, BullMQ's state and the queue position are asked too (else guessed)."""
        if not ids:
            return []
        k = self.keys
        batch = Batch(self.redis)
        for job_id, queue in ids:
            batch.add("hgetall", k.job(job_id))
            batch.add("hgetall", k.bull(queue, job_id))
            if with_state:
                bq = self.control.queue(queue)
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
            out.append(view_of(job_id, queue, ours, bull, state, pos, with_data))
        return out

    async def list(
        self,
        user_id: str | None,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        with_data: bool = True,
        search: Search | None = None,
    ) -> JobList:
        """A user's jobs (`user_id` "*": every user's), newest first, optionally by queue,
        status and `search` (prompt text, id prefix, time range); `cursor` pages on; `with_data`
        False leaves each payload out (and unparsed).

        It reads the user's own history index (never every job), newest first, at most 50 x
        `limit` entries a call: a page can hold fewer than `limit` jobs and still have a
        `nextCursor` (more history to search). A time range's start ends the read where the
        history gets older than it."""
        find = search or Search()
        if find.text is not None:
            with_data = True  # the prompt is in the payload
        if queue is not None and queue not in self.control.names:
            raise UnknownQueue(queue)
        if user_id is None:
            raise InvalidPayload("user is required to list jobs")
        limit = max(1, min(limit, 200))
        key = self.keys.recent if user_id == "*" else self.keys.user_jobs(user_id)
        try:
            top = f"({int(cursor)}" if cursor else "+inf"
        except ValueError:
            raise InvalidPayload("invalid cursor", errors=[{"field": "cursor", "message": "invalid"}]) from None
        found: builtins.list[JobView] = []
        next_cursor: str | None = None
        scanned = 0
        older = False  # past the time range's start: nothing older is read
        while len(found) < limit and not older:
            if scanned >= 50 * limit:  # the read's bound: the next page goes on from here
                next_cursor = top[1:]
                break
            batch = cast(builtins.list[tuple[str, float]], await self.redis.zrevrangebyscore(
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
            views = {v.id: v for v in await self.views(ids, with_state=False, with_data=with_data)}
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
                if find.since_s is not None and v.created_at is not None and v.created_at < find.since_s:
                    older = True
                    break
                if not find.matches(v):
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

    async def logs(self, job_id: str, queue: str, limit: int = 1000) -> builtins.list[str]:
        """The newest `limit` lines of a job's log (BullMQ's job log: its workers' lines too)."""
        return [x.decode() if isinstance(x, bytes) else x
                for x in await self.redis.lrange(self.keys.bull_logs(queue, job_id), -limit, -1)]

    async def open_jobs(self, user_id: str, limit: int) -> builtins.list[str]:
        """Up to `limit` of a user's unfinished jobs (any `limit` of them when there are more)."""
        ids = cast(builtins.list[Any], await self.redis.srandmember(self.keys.waiting_count(user_id), limit))
        return [x.decode() if isinstance(x, bytes) else str(x) for x in ids or ()]
