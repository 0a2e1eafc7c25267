"""Adoption: the records a queue keeps beside BullMQ's, brought up to date in the background.
Jobs that plain BullMQ producers added get a record of ours (their user's history, their
events); fair-share clocks that no longer matter are pruned. `_user_of` is the user-id rule for
an adopted job's payload."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from dash_ray.models.base import is_user_id
from dash_ray.queues.batch import Batch
from dash_ray.queues.lifecycle import Lifecycle

__all__ = ["Adoption"]


class Adoption:
    """Adopts one queue's foreign jobs and prunes its fair-share clocks."""

    def __init__(self, redis: Redis, queue: str, lifecycle: Lifecycle) -> None:
        self.redis = redis
        self.name = queue
        self.lifecycle = lifecycle
        self._fair_cursor = 0  # where prune_fair's walk through the fair-share clocks is

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


def _user_of(raw: Any) -> str | None:
    """The `userId` of a BullMQ job's data, if it is a user id by the one rule (`is_user_id`: one a
    token can have); else None, as for a job without one."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return None
    user = data.get("userId") if isinstance(data, dict) else None
    return user if is_user_id(user) else None
