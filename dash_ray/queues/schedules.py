"""Recurring jobs in BullMQ's job-scheduler layout (`{prefix}:{queue}:repeat` and its per-scheduler
hashes): a user's schedule is the scheduler `{user}.{name}` (a name holds no '.': the user is what
comes before the last one), whose jobs BullMQ makes one at a time (`repeat:{id}:{ms}`), each as its
predecessor starts (`QueueConsumer` does that step, as BullMQ's workers do). Its jobs are plain
BullMQ jobs with the owner's `userId` in their data: adopted into the owner's history like any
other producer's. A Node `upsertJobScheduler` on the same Redis makes jobs dash-ray runs the same way.

Which queue each of a user's schedules is on: `{ns}sched:{user}` (name -> queue), also what
their count is checked against."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from dash_ray.errors import RateLimited, ScheduleNotFound
from dash_ray.models.options import ScheduleOptions
from dash_ray.models.payloads import JobPayload
from dash_ray.models.views import ScheduleView
from dash_ray.queues.control import QueueControl
from dash_ray.queues.keys import Keys

__all__ = ["Schedules", "scheduler_id"]

JOB_NAME = "scheduled"


def scheduler_id(user_id: str, name: str) -> str:
    """A user's schedule's scheduler id in BullMQ."""
    return f"{user_id}.{name}"


class Schedules:
    """A deployment's schedules, read and written through BullMQ's job-scheduler scripts."""

    def __init__(self, redis: Redis, keys: Keys, control: QueueControl, *, keep_completed: int = 1000,
                 keep_failed: int = 5000, keep_s: int = 7 * 24 * 3600, default_attempts: int = 3) -> None:
        self.redis = redis
        self.keys = keys
        self.control = control
        self.keep = (keep_completed, keep_failed, keep_s)
        self.default_attempts = default_attempts

    def _index(self, user_id: str) -> str:
        return f"{self.keys.ns}sched:{user_id}"

    async def upsert(self, owner: str, name: str, queue: str, payload: JobPayload, options: ScheduleOptions, *,
                     every_ms: int | None, cron: str | None, tz: str | None, end_ms: int | None,
                     limit: int | None, most: int) -> tuple[ScheduleView, bool]:
        """Make or replace the owner's schedule `name` (on `queue`; one that was on another queue
        leaves it). RateLimited past `most` schedules a user (checked after its own entry is
        written, so concurrent posts cannot all pass). Returns its view and whether it is new."""
        bq = self.control.queue(queue)
        index = self._index(owner)
        sid = scheduler_id(owner, name)
        was = await self.redis.hget(index, name)
        new = bool(await self.redis.hset(index, name, queue))
        if new and int(await self.redis.hlen(index)) > most:
            await self.redis.hdel(index, name)
            raise RateLimited(f"at most {most} schedules per user (DASH_MAX_SCHEDULES_PER_USER); delete one first",
                              retry_after_s=60)
        if was and was != queue:
            await self.control.queue(str(was)).removeJobScheduler(sid)
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
            "removeOnComplete": {"count": completed, "age": keep_s}, "removeOnFail": {"count": failed, "age": keep_s},
        }
        if options.timeout_s:
            opts["timeoutS"] = options.timeout_s
        data = payload.wire(exclude_none=True)
        data.pop(payload.model_fields[payload.id_field].alias or payload.id_field, None)  # each run's id is BullMQ's
        await bq.upsertJobScheduler(sid, repeat, JOB_NAME, data, opts)
        found = await self.get(owner, name)
        assert found is not None
        return found, new

    async def get(self, owner: str, name: str) -> ScheduleView | None:
        """The owner's schedule `name`, if there is one."""
        queue = await self.redis.hget(self._index(owner), name)
        if not queue or queue not in self.control.names:
            return None
        raw = await self.control.queue(str(queue)).getJobScheduler(scheduler_id(owner, name))
        return _view(str(queue), raw) if raw else None

    async def list(self, owner: str | None) -> list[ScheduleView]:
        """The schedules of `owner` (None: everyone's, Node's own schedulers too), by next run."""
        out: list[ScheduleView] = []
        for queue in self.control.names:
            for raw in await self.control.queue(queue).getJobSchedulers(0, 999, True):
                view = _view(queue, raw)
                if owner is None or view.user_id == owner:
                    out.append(view)
        return sorted(out, key=lambda v: (v.next_at is None, v.next_at or 0.0))

    async def remove(self, owner: str, name: str) -> ScheduleView:
        """Remove the owner's schedule `name` and its next job (one running goes on); JobNotFound
        if there is none."""
        found = await self.get(owner, name)
        if found is None:
            await self.redis.hdel(self._index(owner), name)
            raise ScheduleNotFound(name)
        await self.control.queue(found.queue).removeJobScheduler(found.id)
        await self.redis.hdel(self._index(owner), name)
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
