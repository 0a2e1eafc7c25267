"""Event bus: job events through Redis pub/sub, with a per-job replay stream and latest state."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from dash_ray.models.events import JobCompletedEvent, JobFailedEvent, JobProgressEvent
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import publish_script
from dash_ray.queues.pubsub import RawPubSub

__all__ = ["AnyEvent", "EventBus", "EventHub", "SyncEventBus", "event_from_state"]

log = logging.getLogger(__name__)

AnyEvent = JobProgressEvent | JobCompletedEvent | JobFailedEvent
_LIVE_AGAIN = frozenset({"waiting", "delayed", "retrying"})


_SEP = "\x1f"


def _state_fields(event: AnyEvent, extra: dict[str, Any] | None = None) -> str:
    """The job hash fields an event sets, as one argument: key, value, ... joined by \\x1f."""
    fields: dict[str, Any] = {"queue": event.queue, "updated": event.ts, **(extra or {})}
    if event.user_id:
        fields["userId"] = event.user_id
    if isinstance(event, JobCompletedEvent):
        fields.update(status="completed", progress=100, message="",
                      result=json.dumps(event.result, separators=(",", ":")), finished=event.ts)
    elif isinstance(event, JobFailedEvent):
        fields.update(status=event.status, error=event.error, finished=event.ts, message=event.error)
    else:
        fields.update(status=event.status, progress=event.progress, message=event.message)
        if event.status == "active":
            fields["started"] = event.ts
        if event.attempt is not None:
            fields["attempt"] = event.attempt
    return _SEP.join(f"{k}{_SEP}{str(v).replace(_SEP, ' ')}" for k, v in fields.items())


def event_from_state(job_id: str, state: dict[str, str]) -> AnyEvent | None:
    """The job's latest state (our job hash) as the event a late subscriber should get."""
    status = state.get("status")
    if not status:
        return None
    common: dict[str, Any] = {
        "job_id": job_id,
        "queue": state.get("queue", ""),
        "seq": int(state.get("seq", 0)),
        "ts": float(state.get("updated", 0) or 0),
        "user_id": state.get("userId"),
    }
    if status == "completed":
        raw = state.get("result")
        return JobCompletedEvent(result=json.loads(raw) if raw else None, **common)
    if status in ("failed", "cancelled"):
        return JobFailedEvent(error=state.get("error", status), status=status, **common)
    return JobProgressEvent(
        status=status,
        progress=float(state.get("progress", 0) or 0),
        message=state.get("message", ""),
        **common,
    )


DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def duration_bucket(seconds: float) -> str:
    """The histogram field of a duration: `le_<bound>` of the first bound it fits, else `le_inf`."""
    for b in DURATION_BUCKETS:
        if seconds <= b:
            return f"le_{b:g}"
    return "le_inf"


class _Publisher:
    """Shared by the async and sync buses: the PUBLISH script's keys and arguments."""

    def __init__(self, keys: Keys, events_per_job: int, finished_ttl_s: int, keep_finished: int) -> None:
        self.keys = keys
        self.events_per_job = events_per_job
        self.finished_ttl_s = finished_ttl_s
        self.keep_finished = keep_finished

    def _call(self, event: AnyEvent, position_in: str | None, guard: tuple[str, str] | None = None,
              duration_s: float | None = None, new_job: dict[str, Any] | None = None,
              history_max: int = 0) -> tuple[list[str], list[Any]]:
        k = self.keys
        if new_job is not None:
            mode = "3"
        elif isinstance(event, JobCompletedEvent | JobFailedEvent):
            mode = "1"
        elif event.status in _LIVE_AGAIN:
            mode = "2"
        else:
            mode = "0"
        if not event.ts:
            event.ts = round(time.time(), 3)
        body = event.model_dump_json(by_alias=True, exclude_none=True, exclude={"seq"})[:-1]
        wait_key = k.bull(position_in, "wait") if position_in else ""
        prio_key = k.bull(position_in, "prioritized") if position_in else ""
        keys = [
            k.job(event.job_id),
            k.events(event.job_id),
            k.finished(event.queue),
            k.waiting_count(event.user_id or "_"),
            k.cancel(event.job_id),
            k.metrics(event.queue),
            k.user_jobs(event.user_id or "_"),
            k.user_counter(event.user_id or "_"),
        ]
        args: list[Any] = [
            k.channel(event.job_id), body, mode, event.job_id, int(event.ts * 1000), wait_key, prio_key,
            *(guard or ("", "")), _state_fields(event, new_job),
            duration_bucket(duration_s) if duration_s is not None else "", round(duration_s or 0.0, 6),
            history_max,
        ]
        return keys, args

    def _script_text(self) -> str:
        return publish_script(self.events_per_job, self.finished_ttl_s, self.keep_finished, self.keys.ns)


class SyncEventBus(_Publisher):
    """Publishes job events from plain threads (GPU workers) with a blocking Redis client."""

    def __init__(self, redis: SyncRedis, keys: Keys, *, events_per_job: int = 1000,
                 finished_ttl_s: int = 7 * 24 * 3600, keep_finished: int = 6000) -> None:
        super().__init__(keys, events_per_job, finished_ttl_s, keep_finished)
        self.redis = redis
        self._publish = redis.register_script(self._script_text())

    def publish(self, event: AnyEvent) -> int:
        """Publish one event; returns its seq."""
        keys, args = self._call(event, None)
        seq, _pos, _cancelled = self._publish(keys=keys, args=args)
        return int(seq)

    def publish_batch(self, events: list[AnyEvent]) -> list[bool]:
        """Publish events in order in one round trip; returns, per event, whether a cancel was
        requested for its (live) job."""
        calls = [self._call(e, None) for e in events]
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        out = []
        for (keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                reply = self._publish(keys=keys, args=args)  # loads the script, then runs it
            elif isinstance(reply, Exception):
                raise reply
            out.append(bool(int(reply[2])))
        return out


class EventBus(_Publisher):
    """Publishes job events (pub/sub + capped stream + latest state, atomically) and reads them back."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        events_per_job: int = 1000,
        finished_ttl_s: int = 7 * 24 * 3600,
        keep_finished: int = 6000,
    ) -> None:
        super().__init__(keys, events_per_job, finished_ttl_s, keep_finished)
        self.redis = redis
        self._publish = redis.register_script(self._script_text())
        register(self._publish)

    async def publish(self, event: AnyEvent, *, batch: Batch | None = None, position_in: str | None = None,
                      guard: tuple[str, str] | None = None, duration_s: float | None = None,
                      new_job: dict[str, Any] | None = None, history_max: int = 0) -> int | None:
        """Publish one event; returns its seq (None when queued on a batch: its reply is
        [seq, position, cancel requested]).

        `position_in` names the queue whose wait list gives the event a `queuePosition`;
        `guard` = (BullMQ job key, finishedOn): publish only if the job holds that finishedOn;
        `duration_s` (terminal events) is counted in the queue's duration histogram;
        `new_job` (fields of a brand-new job's hash) also indexes it in its user's history.
        """
        keys, args = self._call(event, position_in, guard, duration_s, new_job, history_max)
        if batch is not None:
            await self._publish(keys=keys, args=args, client=batch)
            return None
        seq, _pos, _cancelled = await self._publish(keys=keys, args=args)
        return int(seq)

    async def publish_raw(self, event: AnyEvent) -> list[int]:
        """Publish one event; returns the script's reply [seq, position, cancel requested]."""
        keys, args = self._call(event, None)
        return [int(x) for x in await self._publish(keys=keys, args=args)]

    async def state(self, job_id: str) -> dict[str, str]:
        """Our hash of the job: queue, owner, status, progress, message, result, seq..."""
        return await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[no-any-return]

    async def latest(self, job_id: str) -> AnyEvent | None:
        """The job's latest state as an event, or None for an unknown job."""
        return event_from_state(job_id, await self.state(job_id))

    async def replay(self, job_id: str, after_seq: int = 0, limit: int = 10_000) -> list[str]:
        """The job's events with seq > after_seq, oldest first, as JSON strings."""
        entries = await self.redis.xrange(self.keys.events(job_id), min=f"{after_seq + 1}-0", count=limit)
        return [fields["m"] for _id, fields in entries]


Listener = Callable[[str, str], None]


class EventHub:
    """One pub/sub connection that fans channel messages out to local listeners.

    Listeners are called as `listener(channel, data)` on the hub's event loop; they must not block.
    """

    def __init__(self, url: str) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._sub = RawPubSub(url, self._dispatch)

    async def start(self) -> None:
        """Connect and start reading."""
        await self._sub.start()
        await self._sub.wait_connected()

    async def close(self) -> None:
        """Stop reading and close the connection."""
        await self._sub.close()

    @property
    def channels(self) -> int:
        """How many channels have listeners."""
        return len(self._listeners)

    async def add(self, channel: str, listener: Listener) -> None:
        """Call `listener` for every message on `channel` from now on.

        Returns once Redis confirmed the subscription: state read after this, on any
        connection, plus the live events, miss nothing (the WebSocket snapshot relies on it).
        """
        subs = self._listeners.get(channel)
        if subs is None:
            self._listeners[channel] = {listener}
            await self._sub.subscribe_confirmed([channel])
        else:
            subs.add(listener)

    async def remove(self, channel: str, listener: Listener) -> None:
        """Stop calling `listener` for `channel`."""
        subs = self._listeners.get(channel)
        if not subs:
            return
        subs.discard(listener)
        if not subs:
            del self._listeners[channel]
            self._sub.unsubscribe([channel])

    def _dispatch(self, channel: str, data: str) -> None:
        for listener in tuple(self._listeners.get(channel, ())):
            try:
                listener(channel, data)
            except Exception:
                log.exception("event listener failed on %s", channel)
