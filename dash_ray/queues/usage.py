"""UsageBook: what each user keeps in the queues' Redis, read back: their bytes (after releasing
what expired: the USAGE script), their unfinished jobs, and the users who keep the most. The
charges themselves are taken by the lifecycle's CREATE and REOPEN scripts."""

from __future__ import annotations

import time
from typing import Any, cast

from redis.asyncio import Redis

from dash_ray.queues.batch import register
from dash_ray.queues.keys import Keys
from dash_ray.queues.lua import USAGE

__all__ = ["UsageBook"]


class UsageBook:
    """Per-user bytes and unfinished jobs, on one connection."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._usage: Any = redis.register_script(USAGE.text())  # USAGE bakes in no constants
        register(self._usage)

    async def open_jobs(self, user_id: str) -> int:
        """How many of the user's jobs are not finished (waiting, delayed or running)."""
        return int(await self.redis.scard(self.keys.waiting_count(user_id)))

    async def usage(self, user_id: str) -> tuple[int, int]:
        """What a user keeps in Redis now: (bytes, unfinished jobs)."""
        k = self.keys
        keys, args = USAGE.pack({"usage": k.usage, "sizes": k.sizes(user_id), "kept": k.kept(user_id),
                                 "open": k.waiting_count(user_id)}, {"user": user_id, "now_ms": int(time.time() * 1000)})
        used, unfinished = await self._usage(keys=keys, args=args)
        return int(used), int(unfinished)

    async def top_usage(self, n: int = 20) -> list[tuple[str, int]]:
        """The `n` users who keep the most bytes in Redis, with their bytes."""
        rows = cast(list[tuple[Any, float]], await self.redis.zrevrange(self.keys.usage, 0, n - 1, withscores=True))
        return [(m.decode() if isinstance(m, bytes) else str(m), int(score)) for m, score in rows]
