"""Recurring jobs in BullMQ's job-scheduler layout (`{prefix}:{queue}:repeat` and its per-scheduler
hashes): a user's schedule is the scheduler `{user}.{name}` (a name holds no '.': the user is what
comes before the last one), whose jobs BullMQ makes one at a time (`repeat:{id}:{ms}`), each as its
predecessor starts (`QueueConsumer` does that step, as BullMQ's workers do). Its jobs are plain
BullMQ jobs with the owner's `userId` in their data: adopted into the owner's history like any
other producer's. A Node `upsertJobScheduler` on the same Redis makes jobs dash-ray runs the same way.

Which queue each of a user's schedules is on, and how often it runs: `{ns}sched:{user}` (name ->
`queue` and runs a minute), what a user's list, count and budget are read from. A user's changes
are made one at a time (a short lock per user), so the index, the cap and BullMQ's schedulers
cannot disagree, however the requests race.

Runs are not counted one by one against the owner's submission rate (BullMQ makes them): a
user's schedules together may run at most as often as that rate allows (`budget_per_min`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from datetime import datetime, timezone
from typing import Any

from croniter import croniter
from redis.asyncio import Redis

from dash_ray.errors import InvalidPayload, RateLimited, ScheduleNotFound
from dash_ray.models.events import JobFailedEvent
from dash_ray.models.options import ScheduleOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.status import FINAL, Status
from dash_ray.models.views import ScheduleView
from dash_ray.queues.control import QueueControl
from dash_ray.queues.keys import Keys
from dash_ray.queues.lifecycle import Lifecycle

__all__ = ["MAX_SCHEDULER_ID", "Schedules", "runs_per_minute", "scheduler_id"]

JOB_NAME = "scheduled"
MAX_SCHEDULER_ID = 150  # `repeat:{id}:{ms}` stays a lookup id, and its results' folder a path segment
LOCK_S = 10


def scheduler_id(user_id: str, name: str) -> str:
    """A user's schedule's scheduler id in BullMQ."""
    return f"{user_id}.{name}"


def runs_per_minute(every_ms: int | None, cron: str | None) -> float:
    """How often a schedule runs at most: `every`, or the shortest gap of its cron pattern over
    its next runs (a pattern with seconds may run every second)."""
    if every_ms:
        return 60_000 / every_ms
    itr = croniter(cron or "* * * * *", datetime.now(timezone.utc), second_at_beginning=True)
    times = [itr.get_next(float) for _ in range(8)]
    gap = min(b - a for a, b in itertools.pairwise(times))
    return 60 / max(gap, 1.0)


class Schedules:
    """A deployment's schedules, read and written through BullMQ's job-scheduler scripts."""

    def __init__(self, redis: Redis, keys: Keys, control: QueueControl, lifecycle: Lifecycle, *,
                 keep_completed: int = 1000, keep_failed: int = 5000, keep_s: int = 7 * 24 * 3600,
                 default_attempts: int = 3) -> None:
        self.redis = redis
        self.keys = keys
        self.control = control
        self.lifecycle = lifecycle
        self.keep = (keep_completed, keep_failed, keep_s)
        self.default_attempts = default_attempts

    def _index(self, user_id: str) -> str:
        return f"{self.keys.ns}sched:{user_id}"

    async def _locked(self, user_id: str) -> str:
        """Take the user's schedules' lock (waits up to a few seconds); returns its token."""
        key, token = f"{self.keys.ns}schedlock:{user_id}", secrets.token_hex(8)
        for _ in range(100):
            if await self.redis.set(key, token, nx=True, ex=LOCK_S):
                return token
            await asyncio.sleep(0.05)
        raise RateLimited("another change to your schedules is being made; try again", retry_after_s=1)

    async def _unlock(self, user_id: str, token: str) -> None:
        key = f"{self.keys.ns}schedlock:{user_id}"
        if await self.redis.get(key) == token:
            await self.redis.delete(key)

    async def upsert(self, owner: str, name: str, queue: str, payload: JobPayload, options: ScheduleOptions, *,
                     every_ms: int | None, cron: str | None, tz: str | None, end_ms: int | None,
                     limit: int | None, most: int, budget_per_min: float) -> tuple[ScheduleView, bool]:
        """Make or replace the owner's schedule `name` on `queue` (one of that name elsewhere is
        removed). RateLimited past `most` schedules a user, InvalidPayload when the user's
        schedules together would run more often than `budget_per_min`. Returns its view and
        whether it is new."""
        sid = scheduler_id(owner, name)
        if len(sid) > MAX_SCHEDULER_ID:
            raise InvalidPayload(f"invalid payload: name: with your user id, at most {MAX_SCHEDULER_ID} characters",
                                 errors=[{"field": "name", "message": "too long for your user id"}])
        bq = self.control.queue(queue)
        rate = runs_per_minute(every_ms, cron)
        index = self._index(owner)
        token = await self._locked(owner)
        try:
            entries = {k: json.loads(v) for k, v in (await self.redis.hgetall(index)).items()}
            new = name not in entries
            others = {k: v for k, v in entries.items() if k != name}
            if new and len(others) >= most:
                raise RateLimited(f"at most {most} schedules per user (DASH_MAX_SCHEDULES_PER_USER); delete one first",
                                  retry_after_s=60)
            used = sum(float(v.get("perMin", 0)) for v in others.values())
            if used + rate > budget_per_min:
                raise InvalidPayload(
                    f"invalid payload: your schedules would run {used + rate:.4g} jobs a minute; at most "
                    f"{budget_per_min:.4g} (your submission rate)",
                    errors=[{"field": "every" if every_ms else "cron", "message": "over your submission rate"}])
            before = await self._pending(sid)
            for other in self.control.names:  # the same name on another queue (or left from a crash) goes
                if other != queue:
                    await self.control.queue(other).removeJobScheduler(sid)
            repeat: dict[str, Any] = {"every": every_ms} if every_ms else {"pattern": cron}
            if tz:
                repeat["tz"] = tz
            if end_ms is not None:
                repeat["endDate"] = end_ms
            if limit is not None:
                repeat["limit"] = limit
            completed, failed, keep_s = self.keep
            opts: dict[str, Any] = {
                "priority": options.priority, "attempts": options.attempts or self.default_attempts,
                "backoff": {"type": options.backoff.type, "delay": int(options.backoff.delay_s * 1000)},
                "removeOnComplete": {"count": completed, "age": keep_s},
                "removeOnFail": {"count": failed, "age": keep_s},
            }
            if options.timeout_s:
                opts["timeoutS"] = options.timeout_s
            data = payload.wire(exclude_none=True)
            data.pop(payload.model_fields[payload.id_field].alias or payload.id_field, None)  # each run's id is BullMQ's
            await bq.upsertJobScheduler(sid, repeat, JOB_NAME, data, opts)
            await self.redis.hset(index, name, json.dumps({"queue": queue, "perMin": rate}))
            await self._end_replaced(before)
        finally:
            await self._unlock(owner, token)
        found = await self.get(owner, name)
        assert found is not None
        return found, new

    async def _scheduler(self, queue: str, sid: str) -> dict[str, Any] | None:
        """BullMQ's record of a queue's scheduler `sid`, or None (BullMQ's reader fails on one
        that does not exist: its entry in the queue's `repeat` set is checked first)."""
        if await self.redis.zscore(self.keys.bull(queue, "repeat"), sid) is None:
            return None
        try:
            raw = await self.control.queue(queue).getJobScheduler(sid)
        except ValueError:  # removed in between
            return None
        return raw if isinstance(raw, dict) else None

    async def _pending(self, sid: str) -> list[tuple[str, str]]:
        """(queue, job id) of the scheduler's next runs not yet started, on every queue."""
        out = []
        for queue in self.control.names:
            raw = await self._scheduler(queue, sid)
            if raw and raw.get("next"):
                out.append((queue, f"repeat:{sid}:{int(raw['next'])}"))
        return out

    async def _end_replaced(self, runs: list[tuple[str, str]]) -> None:
        """End `cancelled` those of `runs` BullMQ dropped (a schedule removed or replaced deletes
        its waiting next run) that have a record still open: no final event came for them."""
        for queue, job_id in runs:
            if await self.redis.exists(self.keys.bull(queue, job_id)):
                continue  # still BullMQ's: it runs (a run already due is not removed)
            status, owner = await self.redis.hmget(self.keys.job(job_id), "status", "userId")
            if status and status not in FINAL:
                await self.lifecycle.finish(JobFailedEvent(
                    job_id=job_id, queue=queue, user_id=owner, status=Status.CANCELLED.value,
                    error="cancelled: its schedule was removed or replaced"))

    async def get(self, owner: str, name: str) -> ScheduleView | None:
        """The owner's schedule `name`, if there is one."""
        raw_entry = await self.redis.hget(self._index(owner), name)
        queue = json.loads(raw_entry)["queue"] if raw_entry else None
        if not queue or queue not in self.control.names:
            return None
        raw = await self._scheduler(str(queue), scheduler_id(owner, name))
        return _view(str(queue), raw) if raw else None

    async def list(self, owner: str | None) -> list[ScheduleView]:
        """The schedules of `owner` (read from their index: at most their cap), or (None)
        everyone's, Node's own schedulers too (a scan of every queue's), by next run."""
        out: list[ScheduleView] = []
        if owner is not None:
            for name in sorted(await self.redis.hkeys(self._index(owner))):
                view = await self.get(owner, str(name))
                if view is not None:
                    out.append(view)
        else:
            for queue in self.control.names:
                out += [_view(queue, raw) for raw in await self.control.queue(queue).getJobSchedulers(0, -1, True)]
        return sorted(out, key=lambda v: (v.next_at is None, v.next_at or 0.0))

    async def remove(self, owner: str, name: str) -> ScheduleView:
        """Remove the owner's schedule `name` and its next run if not yet due (one due or running
        goes on); ScheduleNotFound if there is none."""
        token = await self._locked(owner)
        try:
            found = await self.get(owner, name)
            sid = scheduler_id(owner, name)
            before = await self._pending(sid)
            for queue in self.control.names:  # wherever it is (an index left behind by a crash too)
                await self.control.queue(queue).removeJobScheduler(sid)
            await self.redis.hdel(self._index(owner), name)
            await self._end_replaced(before)
        finally:
            await self._unlock(owner, token)
        if found is None:
            raise ScheduleNotFound(name)
        return found


def _view(queue: str, raw: dict[str, Any]) -> ScheduleView:
    key = str(raw.get("key") or "")
    template = raw.get("template") or {}
    data: dict[str, Any] = template["data"] if isinstance(template.get("data"), dict) else {}
    user = data.get("userId") if isinstance(data.get("userId"), str) else None
    every = raw.get("every")
    end = raw.get("endDate")
    nxt = raw.get("next")
    return ScheduleView(
        id=key, name=key.rsplit(".", 1)[-1] if user and key.startswith(f"{user}.") else key, queue=queue,
        user_id=user, every=every / 1000 if every else None, cron=raw.get("pattern"), tz=raw.get("tz"),
        end_at=end / 1000 if end else None, limit=raw.get("limit"), runs=int(raw.get("iterationCount") or 0),
        next_at=int(nxt) / 1000 if nxt else None, payload=data)
