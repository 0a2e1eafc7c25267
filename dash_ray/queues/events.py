"""Reading job events: a job's latest state, its replay stream, and live events through pub/sub
(`EventHub`). They are written by `queues/lifecycle.py`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis

from dash_ray.models.events import (
    Frame,
    JobCompletedEvent,
    JobEvent,
    JobFailedEvent,
    JobProgressEvent,
)
from dash_ray.models.status import Status, is_failure
from dash_ray.queues.keys import Keys
from dash_ray.queues.pubsub import RawPubSub

__all__ = ["EventBus", "EventHub", "Feed", "event_from_state"]

log = logging.getLogger(__name__)


def event_from_state(job_id: str, state: dict[str, str]) -> JobEvent | None:
    """The job's latest state (our job hash) as the event a late subscriber should get: its
    status is the one the hash's last event wrote (`lifecycle.state_fields`), BullMQ not asked."""
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
    if status == Status.COMPLETED:
        raw = state.get("result")
        return JobCompletedEvent(result=json.loads(raw) if raw else None, **common)
    if is_failure(status):
        return JobFailedEvent(error=state.get("error", status), status=status, **common)
    return JobProgressEvent(
        status=status,
        progress=float(state.get("progress", 0) or 0),
        message=state.get("message", ""),
        **common,
    )


class EventBus:
    """Reads job events back: the latest state of a job and its replay stream."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def state(self, job_id: str) -> dict[str, str]:
        """Our hash of the job: queue, owner, status, progress, message, result, seq..."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.job(job_id)))

    async def latest(self, job_id: str) -> JobEvent | None:
        """The job's latest state as an event, or None for an unknown job."""
        return event_from_state(job_id, await self.state(job_id))

    async def replay(self, job_id: str, after_seq: int = 0, limit: int = 10_000) -> list[str]:
        """The job's events with seq > after_seq, oldest first, as JSON frames."""
        entries = cast(list[tuple[str, dict[str, str]]],
                       await self.redis.xrange(self.keys.events(job_id), min=f"{after_seq + 1}-0", count=limit))
        return [fields["m"] for _id, fields in entries]


Listener = Callable[[str, str], None]


class EventHub:
    """One pub/sub connection that fans channel messages out to local listeners.

    Listeners are called as `listener(channel, data)` on the hub's event loop; they must not block.
    The connection comes back by itself after a Redis outage; what was published meanwhile is
    not delivered, so after each reconnect the hub runs its `on_resync` callbacks (the WebSocket
    sessions catch up from the replay streams).
    """

    def __init__(self, url: str) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._resync: set[Callable[[], Awaitable[None]]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub = RawPubSub(url, self._dispatch, self._resubscribed)

    async def start(self, wait_s: float = 0.0) -> None:
        """Start connecting and reading; with `wait_s`, wait that long for the first connection
        (raises TimeoutError). Without, a Redis that is down now is waited for in the background."""
        await self._sub.start()
        if wait_s:
            await self._sub.wait_connected(wait_s)

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is up."""
        return self._sub._connected.is_set()

    @property
    def reconnects(self) -> int:
        """How many times the connection came back."""
        return self._sub.reconnects

    def on_resync(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `await callback()` after each reconnect, once every channel is subscribed again."""
        self._resync.add(callback)

    def off_resync(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Stop calling `callback` after reconnects."""
        self._resync.discard(callback)

    def _resubscribed(self) -> None:
        for callback in tuple(self._resync):
            task = asyncio.ensure_future(callback())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop reading and close the connection."""
        await self._sub.close()

    @property
    def channels(self) -> int:
        """How many channels have listeners."""
        return len(self._listeners)

    async def add(self, channel: str, listener: Listener, *, confirm: bool = True) -> None:
        """Call `listener` for every message on `channel` from now on.

        With `confirm`, returns once Redis confirmed the subscription: state read after this, on
        any connection, plus the live events, miss nothing (the WebSocket snapshot relies on it).
        If that fails (Redis down), nothing is left subscribed and the error is raised.
        """
        subs = self._listeners.get(channel)
        if subs is None:
            self._listeners[channel] = {listener}
            if not confirm:
                self._sub.subscribe([channel])
                return
            try:
                await self._sub.subscribe_confirmed([channel])
            except BaseException:
                await self.remove(channel, listener)
                raise
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


FeedListener = Callable[[Frame], None]


class Feed:
    """Every new job's first event, by owner: the scripts that make a job (create, adopt) publish
    its first frame on one feed channel as well as its own; this routes each to the listeners of
    its owner (`join(user, fn)`) and to those of every user (`join(None, fn)`: admins). One
    hub listener per replica however many sockets follow; it listens while anyone does."""

    def __init__(self, hub: EventHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self._by_user: dict[str, set[FeedListener]] = {}
        self._everyone: set[FeedListener] = set()
        self._lock = asyncio.Lock()
        self._listening = False

    @property
    def listeners(self) -> int:
        """How many listen (all users' and each user's)."""
        return len(self._everyone) + sum(map(len, self._by_user.values()))

    async def join(self, user_id: str | None, listener: FeedListener) -> None:
        """Call `listener(frame)` for each new job of `user_id` (None: of every user) from now on:
        once this returns, no job made later is missed (the hub confirmed the channel)."""
        async with self._lock:
            if user_id is None:
                self._everyone.add(listener)
            else:
                self._by_user.setdefault(user_id, set()).add(listener)
            if not self._listening:
                try:
                    await self.hub.add(self.channel, self._dispatch)
                except BaseException:
                    self._forget(user_id, listener)
                    raise
                self._listening = True

    async def leave(self, user_id: str | None, listener: FeedListener) -> None:
        """Stop calling `listener`."""
        async with self._lock:
            self._forget(user_id, listener)
            if self._listening and not self.listeners:
                self._listening = False
                await self.hub.remove(self.channel, self._dispatch)

    def _forget(self, user_id: str | None, listener: FeedListener) -> None:
        if user_id is None:
            self._everyone.discard(listener)
            return
        mine = self._by_user.get(user_id)
        if mine is not None:
            mine.discard(listener)
            if not mine:
                del self._by_user[user_id]

    def _dispatch(self, _channel: str, data: str) -> None:
        frame = Frame(data)
        owner = frame.user_id
        mine = self._by_user.get(owner) if owner is not None else None
        for listener in (*(mine or ()), *self._everyone):
            try:
                listener(frame)
            except Exception:
                log.exception("feed listener failed")
