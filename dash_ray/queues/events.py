"""Event bus: job events through Redis pub/sub, with a per-job replay stream and latest state."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis as SyncRedis
from redis.exceptions import NoScriptError
from redis.asyncio import Redis

from dash_ray.models.events import JobCompletedEvent, JobFailedEvent, JobProgressEvent
from dash_ray.queues.batch import Batch, register
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import PUBLISH
from dash_ray.queues.pubsub import RawPubSub

__all__ = ["AnyEvent", "EventBus", "EventHub", "SyncEventBus", "event_from_state"]

log = logging.getLogger(__name__)

AnyEvent = JobProgressEvent | JobCompletedEvent | JobFailedEvent
_LIVE_AGAIN = frozenset({"waiting", "delayed", "retrying"})


def _state_fields(event: AnyEvent) -> list[str]:
    fields: dict[str, Any] = {"queue": event.queue, "updated": event.ts}
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
    flat: list[str] = []
    for k, v in fields.items():
        flat += [k, str(v)]
    return flat


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


class _Publisher:
    """Shared by the async and sync buses: the PUBLISH script's keys and arguments."""

    def __init__(self, keys: Keys, events_per_job: int, finished_ttl_s: int, keep_finished: int) -> None:
        self.keys = keys
        self.events_per_job = events_per_job
        self.finished_ttl_s = finished_ttl_s
        self.keep_finished = keep_finished

    def _call(self, event: AnyEvent, position_in: str | None,
              guard: tuple[str, str] | None = None) -> tuple[list[str], list[Any]]:
        k = self.keys
        if isinstance(event, JobCompletedEvent | JobFailedEvent):
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
        ]
        args: list[Any] = [
            k.channel(event.job_id), body, mode, self.events_per_job, self.finished_ttl_s,
            self.keep_finished, event.job_id, k.ns, int(event.ts * 1000), wait_key, prio_key,
            *(guard or ("", "")), *_state_fields(event),
        ]
        return keys, args


class SyncEventBus(_Publisher):
    """Publishes job events from plain threads (GPU workers) with a blocking Redis client."""

    def __init__(self, redis: SyncRedis, keys: Keys, *, events_per_job: int = 1000,
                 finished_ttl_s: int = 7 * 24 * 3600, keep_finished: int = 6000) -> None:
        super().__init__(keys, events_per_job, finished_ttl_s, keep_finished)
        self.redis = redis
        self._publish = redis.register_script(PUBLISH)

    def publish(self, event: AnyEvent) -> int:
        """Publish one event; returns its seq."""
        keys, args = self._call(event, None)
        seq, _pos = self._publish(keys=keys, args=args)
        return int(seq)

    def publish_batch(self, events: list[AnyEvent], check_keys: list[str]) -> list[bool]:
        """Publish events in order and tell which of `check_keys` exist, in one round trip."""
        calls = [self._call(e, None) for e in events]
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
        for key in check_keys:
            pipe.exists(key)
        replies = pipe.execute(raise_on_error=False)
        for (keys, args), reply in zip(calls, replies, strict=False):
            if isinstance(reply, NoScriptError):
                self._publish(keys=keys, args=args)  # loads the script, then runs it
            elif isinstance(reply, Exception):
                raise reply
        found = replies[len(calls):]
        for reply in found:
            if isinstance(reply, Exception):
                raise reply
        return [bool(x) for x in found]


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
        self._publish = redis.register_script(PUBLISH)
        register(self._publish)

    async def publish(self, event: AnyEvent, *, batch: Batch | None = None, position_in: str | None = None,
                      guard: tuple[str, str] | None = None) -> int | None:
        """Publish one event; returns its seq (None when queued on a batch: its reply is [seq, pos]).

        `position_in` names the queue whose wait list gives the event a `queuePosition`;
        `guard` = (BullMQ job key, finishedOn): publish only if the job holds that finishedOn.
        """
        keys, args = self._call(event, position_in, guard)
        if batch is not None:
            await self._publish(keys=keys, args=args, client=batch)
            return None
        seq, _pos = await self._publish(keys=keys, args=args)
        return int(seq)

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
