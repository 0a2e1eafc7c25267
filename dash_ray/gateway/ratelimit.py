"""Per-user limits kept in Redis with the `limits` package: submissions per window, unfinished jobs."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from dash_ray.errors import RateLimited

__all__ = ["OpenSlots", "SubmitLimiter"]


class SubmitLimiter:
    """Raises RateLimited (with a retry-after) before a submission that would go over a limit."""

    def __init__(self, redis_url: str, key_prefix: str, rate: str, max_open: int,
                 open_jobs: Callable[[str], Awaitable[int]]) -> None:
        self.storage = RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=key_prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.rate = parse(rate.replace(" per ", "/"))
        self.max_open = max_open
        self.open_jobs = open_jobs

    async def check(self, user_id: str, count_open: bool = True) -> None:
        """Count one submission of `user_id`, or raise RateLimited. `count_open` False: the
        unfinished-jobs limit is left to the caller (a submit takes it atomically with the job)."""
        if count_open and await self.open_jobs(user_id) >= self.max_open:
            raise RateLimited(f"too many unfinished jobs (limit {self.max_open}); wait for some to finish",
                              retry_after_s=5)
        if not await self.limiter.hit(self.rate, "submit", user_id):
            stats = await self.limiter.get_window_stats(self.rate, "submit", user_id)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(f"rate limit {self.rate} exceeded; retry in {retry}s", retry_after_s=retry)


class OpenSlots:
    """What each user has open on this replica (sockets, event streams), at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_user: dict[str, int] = {}

    def take(self, user_id: str) -> bool:
        """Take one of the user's slots; False when they have `limit` open."""
        n = self.by_user.get(user_id, 0)
        if n >= self.limit:
            return False
        self.by_user[user_id] = n + 1
        return True

    def give(self, user_id: str) -> None:
        """Give a slot back."""
        n = self.by_user.get(user_id, 1) - 1
        if n > 0:
            self.by_user[user_id] = n
        else:
            self.by_user.pop(user_id, None)

    def of(self, user_id: str) -> int:
        """How many the user has open."""
        return self.by_user.get(user_id, 0)

    @property
    def total(self) -> int:
        """How many are open, all users together."""
        return sum(self.by_user.values())
