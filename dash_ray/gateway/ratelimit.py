"""Per-user limits: submissions per window (in Redis, with the `limits` package), and what a user
holds open on a replica (`OpenSlots`). The unfinished-jobs cap is the store's (taken atomically
with the job)."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from dash_ray.errors import RateLimited

__all__ = ["OpenSlots", "SubmitLimiter"]


class SubmitLimiter:
    """Raises RateLimited (with a retry-after) before a submission that would go over a limit."""

    def __init__(self, redis_url: str, key_prefix: str, rate: str) -> None:
        self.storage = RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=key_prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.rate = parse(rate.replace(" per ", "/"))

    async def check(self, user_id: str) -> None:
        """Count one submission (or retry) of `user_id`, or raise RateLimited."""
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
