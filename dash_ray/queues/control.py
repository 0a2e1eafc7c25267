"""QueueControl: a queue as a whole, for the gateway and the store's parts: its BullMQ `Queue`
object (one per name, on the store's Redis client), pausing and resuming it, its jobs per state,
and what its consumer reports of it (the job-duration histogram, the GPU share chosen and the
memory peaks measured, as `board.CapacityBoard` writes them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from bullmq import Queue as BullQueue
from redis.asyncio import Redis

from dash_ray.errors import UnknownQueue
from dash_ray.queues.batch import register
from dash_ray.queues.board import cold_starts as board_cold_starts
from dash_ray.queues.keys import Keys

__all__ = ["QueueControl", "parse_peaks"]


def parse_peaks(raw: dict[object, object] | None) -> dict[str, tuple[str, int]]:
    """The memory hash (`shape -> "kind:bytes"`) as {shape: (kind, bytes)}; malformed entries are left out."""
    peaks = {}
    for k, v in (raw or {}).items():
        kind, _, n = (v.decode() if isinstance(v, bytes) else str(v)).partition(":")
        if n.isdigit():
            peaks[k.decode() if isinstance(k, bytes) else str(k)] = (kind, int(n))
    return peaks


class QueueControl:
    """The served queues (`names`) and their BullMQ queue objects, made on first use."""

    def __init__(self, redis: Redis, keys: Keys, prefix: str, names: Iterable[str]) -> None:
        self.redis = redis
        self.keys = keys
        self.prefix = prefix
        self.names = tuple(names)
        self._queues: dict[str, BullQueue] = {}

    def queue(self, name: str) -> BullQueue:
        """The BullMQ queue object of `name` (sharing our Redis client); UnknownQueue if not served."""
        if name not in self.names:
            raise UnknownQueue(name)
        q = self._queues.get(name)
        if q is None:
            q = BullQueue(name, {"connection": self.redis, "prefix": self.prefix})
            register(*q.scripts.commands.values())
            self._queues[name] = q
        return q

    async def pause(self, queue: str) -> None:
        """Stop handing out this queue's jobs (running ones finish)."""
        await self.queue(queue).pause()

    async def resume(self, queue: str) -> None:
        """Hand out this queue's jobs again."""
        await self.queue(queue).resume()

    async def is_paused(self, queue: str) -> bool:
        """True while the queue is paused."""
        return bool(await self.queue(queue).isPaused())

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

    async def durations(self, queue: str) -> dict[str, str]:
        """The queue's job-duration histogram (bucket counts and sum) and its jobs ended by final
        status (`ended:<status>`), as its consumer keeps them."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.metrics(queue)))

    async def cold_starts(self, queues: list[str]) -> dict[str, dict[str, dict[str, float]]]:
        """Each queue's workers' cold starts by phase, as its consumer last reported them."""
        return await board_cold_starts(self.redis, self.keys, queues)

    async def sizing(self, queue: str) -> tuple[float | None, dict[str, tuple[str, int]]]:
        """The GPU share a queue's consumer last chose for its workers (None: not reported) and
        the measured peak memory by job shape."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.capacity(queue), "gpuFraction")
        pipe.hgetall(self.keys.memory(queue))
        fraction, raw = await pipe.execute()
        return (float(fraction) if fraction else None), parse_peaks(raw)
